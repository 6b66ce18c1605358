-- Release, optionally handing the lock straight to a waiter of the caller's client.
-- KEYS[1] lock hash, KEYS[2] fence counter
-- ARGV[1] token, ARGV[2] caller's client id (the release message's payload),
-- ARGV[3] next owner's token ('' = no handoff), ARGV[4] next lease ms,
-- ARGV[5] '1' = next owner wants a fencing token, ARGV[6] handoff limit
-- Returns {0, 0} not the owner, {1, published} released, {2, fence} handed over,
-- {3, 0} released to everyone because other clients waited through too many handoffs.
if redis.call('HGET', KEYS[1], 'o') ~= ARGV[1] then
  return {0, 0}
end
if ARGV[3] ~= '' then
  local handoffs = tonumber(redis.call('HGET', KEYS[1], 'h') or '0')
  if handoffs < tonumber(ARGV[6]) or redis.call('HEXISTS', KEYS[1], 'r') == 0 then
    local fence = 0
    if ARGV[5] == '1' then fence = redis.call('INCR', KEYS[2]) end
    redis.call('HSET', KEYS[1], 'o', ARGV[3], 'f', fence, 'h', handoffs + 1)
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
    return {2, fence}
  end
  redis.call('DEL', KEYS[1])
  -- '*': every client's notifier, the caller's included, wakes one waiter.
  redis.call('PUBLISH', KEYS[1], '*')
  return {3, 0}
end
local waited = redis.call('HEXISTS', KEYS[1], 'w')
redis.call('DEL', KEYS[1])
if waited == 1 then
  redis.call('PUBLISH', KEYS[1], ARGV[2])
end
return {1, waited}
