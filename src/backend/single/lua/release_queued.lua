-- Release, continued (see release.lua): someone is queued, or the lock is a grant (to
-- the caller's client, not renewed yet, or run out), or not the caller's.
-- `held` and `hand_over` are release.lua's.
if held[1] ~= ARGV[1] or grant_over(KEYS[1], held[4]) then
  return {0, 0}
end
local queue = queue_without(held[3], ARGV[2])
if ARGV[3] ~= '' then
  -- The client's turn counts every handoff inside it, through Redis (`h`) or not, so
  -- that it is bounded however its threads' tenures are cut.
  local turn = tonumber(held[2] or '0') + tonumber(ARGV[9])
  if queue == '' then return hand_over(0) end
  if turn < tonumber(ARGV[6]) then return hand_over(turn + 1) end
end
if queue ~= '' then
  -- Granted to the client that has waited longest: its owner token is ARGV[10], and
  -- the message tells it so. The grant is short (ARGV[7] ms) until that client
  -- extends it; the hash lives as long as the caller's lease would have, so that the
  -- clients behind it, whose sleeps that lease bounds, still find the queue. The next
  -- of them is told when to look again, in case the grantee never comes. The caller's
  -- client queues at the back if it has waiters itself.
  local nxt, span, mark, rest = queue_pop(queue)
  if ARGV[3] ~= '' then rest = queue_push(rest, ARGV[2], ARGV[5], ARGV[13]) end
  local grant = tonumber(ARGV[7])
  -- The next client is told to look again after the grant's end (plus the notifier's
  -- 250 ms and jitter of a quarter), unless it will look by then anyway: it queued
  -- while a grant or a short lease held the lock (its entry's look), as every client
  -- does while the lock passes from one to the next. Then nothing is sent.
  local after, notify
  if rest ~= '' then
    local id, _, _, look = queue_peek(rest)
    after = id
    local now = now_ms()
    if not look or look > now + grant + 250 then
      notify = true
      rest = queue_set_look(rest, after, now + grant + 250 + math.ceil(grant / 4))
    end
  end
  local ttl = math.max(tonumber(ARGV[8]), grant)
  local fields = {'o', ARGV[10], 'c', nxt, 'h', 0, 'w', '', 'q', rest, 'gt', ttl - grant}
  local fence = 0
  if span > 0 then
    fence = take_fence(KEYS[2], span)
    fields[#fields + 1] = 'f'; fields[#fields + 1] = integer_text(fence)
  end
  local held_back = ARGV[14] == '1'
  if held_back then
    -- settle.lua announces or revokes it: `ge` keeps the grantee's queue entry.
    fields[#fields + 1] = 'ge'; fields[#fields + 1] = nxt .. ':' .. span .. ':' .. mark
  end
  redis.call('HSET', KEYS[1], unpack(fields))
  redis.call('PEXPIRE', KEYS[1], ttl)
  if not held_back then
    -- The 0: no replica was waited for (see settle.lua).
    redis.call(ARGV[15], ARGV[11] .. nxt,
      '!' .. ARGV[10] .. ' ' .. integer_text(fence) .. ' ' .. mark .. ' 0 ' .. ARGV[12])
  end
  if notify then
    redis.call(ARGV[15], ARGV[11] .. after, '@' .. grant .. ' ' .. ARGV[12])
  end
  if held_back then return {4, 0} end
  return {3, 0}
end
redis.call('DEL', KEYS[1])
return {1, 0}
