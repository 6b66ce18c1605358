-- Release, optionally handing the lock straight to a waiter of the caller's client.
-- KEYS[1] lock hash, KEYS[2] fence counter
-- ARGV[1] token, ARGV[2] caller's client id (the release message's payload),
-- ARGV[3] next owner's token ('' = no handoff), ARGV[4] next lease ms,
-- ARGV[5] '1' = next owner wants a fencing token, ARGV[6] handoff limit,
-- ARGV[7] reservation ms
-- Returns {0, 0} not the owner, {1, published} released, {2, fence} handed over,
-- {3, 0} released to everyone because other clients waited through too many handoffs.
local held = redis.call('HMGET', KEYS[1], 'o', 'w', 'h', 'r')
if held[1] ~= ARGV[1] then
  return {0, 0}
end
if ARGV[3] ~= '' then
  local handoffs = tonumber(held[3] or '0')
  if handoffs < tonumber(ARGV[6]) or not held[4] then
    local fence = 0
    if ARGV[5] == '1' then
      fence = redis.call('INCR', KEYS[2])
      redis.call('HSET', KEYS[1], 'o', ARGV[3], 'f', fence, 'h', handoffs + 1)
    else
      redis.call('HSET', KEYS[1], 'o', ARGV[3], 'h', handoffs + 1)
    end
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
    return {2, fence}
  end
  -- Release to everyone but the caller's client, which would otherwise win the race
  -- it starts (its threads retry at once; others first hear the message). The
  -- reservation ends when another client acquires or after ARGV[7] ms.
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'x', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[7])
  -- '*': every client's notifier, the caller's included, wakes one waiter (the
  -- caller's finds the reservation and retries when it ends).
  redis.call('PUBLISH', KEYS[1], '*')
  return {3, 0}
end
redis.call('DEL', KEYS[1])
if held[2] then
  redis.call('PUBLISH', KEYS[1], ARGV[2])
  return {1, 1}
end
return {1, 0}
