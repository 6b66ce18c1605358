-- Acquire: one round trip.
-- KEYS[1] lock hash, KEYS[2] fence counter
-- ARGV[1] token, ARGV[2] lease ms, ARGV[3] fencing tokens to take ('0' = no fencing:
-- the caller's is the first, the rest are for handing the lock on inside its client),
-- ARGV[4] caller's client id, ARGV[5] '1' = the caller will wait (its client queues),
-- ARGV[6] the client's mark for this queueing (see queue.lua)
-- Returns {1, fence} when the caller holds the lock, {0, ms} when someone else does and
-- may keep it for ms more (-1: no expiry).
-- One HMGET reads everything; on a key of another type it raises WRONGTYPE and the
-- key is left untouched.
local held = redis.call('HMGET', KEYS[1], 'o', 'c', 'f', 'q', 'w', 'gt')
local me = ARGV[4]
-- PTTL is read at most once: here for a grant (see grant_over), else for the answer.
local pttl
if not unset(held[6]) then pttl = redis.call('PTTL', KEYS[1]) end
if unset(held[1]) or (pttl and pttl <= tonumber(held[6])) then
  -- Free, or granted to a client that did not take it in time: the queue is kept.
  -- (A grant to the caller's own client is not for this attempt to take, even before
  -- `gt` is cleared: the waiter its message reached may hold it already.)
  local fence = 0
  local fields = {'o', ARGV[1], 'c', me}
  local span = tonumber(ARGV[3])
  if span > 0 then
    fence = take_fence(KEYS[2], span)
    fields[#fields + 1] = 'f'; fields[#fields + 1] = integer_text(fence)
  end
  if held[4] then
    fields[#fields + 1] = 'q'; fields[#fields + 1] = queue_without(held[4], me)
    fields[#fields + 1] = 'h'; fields[#fields + 1] = 0
  end
  if held[5] then fields[#fields + 1] = 'w'; fields[#fields + 1] = '' end
  if held[6] then fields[#fields + 1] = 'gt'; fields[#fields + 1] = '' end
  redis.call('HSET', KEYS[1], unpack(fields))
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, fence}
end
if held[1] == ARGV[1] then
  -- A releaser of the caller's client handed the lock to this token while it was
  -- asking: the lease starts again now, later than this request was sent.
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, tonumber(held[3] or '0')}
end
if not pttl then pttl = redis.call('PTTL', KEYS[1]) end
if not unset(held[6]) then
  -- A grant not taken yet ends sooner than the hash.
  pttl = pttl - tonumber(held[6])
end
if ARGV[5] == '1' then
  if held[2] == me then
    -- The holder's own client (or a grant to it not taken yet): handed on inside it.
    if unset(held[5]) then redis.call('HSET', KEYS[1], 'w', '1') end
  else
    -- The caller sleeps `pttl` (and its jitter) at most before it looks again: its
    -- entry says until when (see release.lua: the notice to look again).
    local look
    if pttl >= 0 then look = now_ms() + pttl end
    local q = queue_set_look(held[4], me, look) or queue_push(held[4], me, ARGV[3], ARGV[6], look)
    redis.call('HSET', KEYS[1], 'q', q)
  end
end
return {0, pttl}
