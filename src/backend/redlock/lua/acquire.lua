-- Acquire on one Redlock master: this master's vote. One round trip.
-- KEYS[1] lock hash, KEYS[2] fence counter
-- ARGV[1] token, ARGV[2] lease ms, ARGV[3] fencing tokens to take ('0' = no fencing),
-- ARGV[4] caller's client id, ARGV[5] '1' = the caller will wait (its client is noted
-- in `q`, and is told when a release names it: see nominate.lua), ARGV[6] the round:
-- which attempt of the caller this vote belongs to (the release of a failed attempt
-- takes back its own round's votes only)
-- Returns {1, fence}: this master votes for the caller (fence 0 without fencing);
-- {0, ms, owner, round}: `owner`'s round `round` holds it here for ms more (-1: no
-- expiry). The round tells a holder from a mix of one owner's rounds: only one
-- round's votes can make up a quorum that its owner knows of. A lock named for
-- another client (nominate.lua) is answered as held by `~<its id>`, round 0, until the
-- name lapses.
-- One HMGET reads everything; on a key of another type it raises WRONGTYPE and the
-- key is left untouched.
local held = redis.call('HMGET', KEYS[1], 'o', 'c', 'q', 'w', 'r', 'n', 't')
local named_left = 0
if unset(held[1]) and not unset(held[6]) and held[6] ~= ARGV[4] then
  named_left = tonumber(held[7] or '0') - now_ms()
end
if (unset(held[1]) and named_left <= 0)
  or (held[1] == ARGV[1] and (tonumber(held[5] or '0') or 0) <= tonumber(ARGV[6])) then
  -- Free (or named for the caller, or a name that lapsed), or the caller's from an
  -- earlier round of the same call whose release has not arrived yet: this round's
  -- vote now (that release checks the round), with fencing tokens of its own. Never a
  -- later round's: a late request of an earlier round would take the vote back from
  -- the round that counted it (`r` would name the earlier round, whose release then
  -- deletes it); it is answered as held. The caller's client leaves the queue.
  local fence = 0
  local fields = {'o', ARGV[1], 'c', ARGV[4], 'r', ARGV[6]}
  local span = tonumber(ARGV[3])
  if span > 0 then
    fence = take_fence(KEYS[2], span)
    fields[#fields + 1] = 'f'; fields[#fields + 1] = integer_text(fence)
  end
  if queue_has(held[3], ARGV[4]) then
    fields[#fields + 1] = 'q'; fields[#fields + 1] = queue_without(held[3], ARGV[4])
  end
  if not unset(held[6]) then
    fields[#fields + 1] = 'n'; fields[#fields + 1] = ''
  end
  redis.call('HSET', KEYS[1], unpack(fields))
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, fence}
end
if ARGV[5] == '1' then
  if held[2] == ARGV[4] then
    -- The holder's own client: its release wakes the caller in memory.
    if unset(held[4]) then redis.call('HSET', KEYS[1], 'w', '1') end
  elseif not queue_has(held[3], ARGV[4]) then
    redis.call('HSET', KEYS[1], 'q', queue_push(held[3], ARGV[4], 0, 0))
  end
end
if unset(held[1]) then
  return {0, named_left, '~' .. held[6], '0'}
end
return {0, redis.call('PTTL', KEYS[1]), held[1], held[5] or '0'}
