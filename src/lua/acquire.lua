-- Acquire: one round trip.
-- KEYS[1] lock hash, KEYS[2] fence counter
-- ARGV[1] token, ARGV[2] lease ms, ARGV[3] '1' = fencing,
-- ARGV[4] caller's client id, ARGV[5] '1' = the caller will wait (mark the holder)
-- Returns {1, fence} when the caller holds the lock, {0, pttl} when someone else does.
if redis.call('EXISTS', KEYS[1]) == 0 then
  local fence = 0
  if ARGV[3] == '1' then fence = redis.call('INCR', KEYS[2]) end
  redis.call('HSET', KEYS[1], 'o', ARGV[1], 'c', ARGV[4], 'f', fence)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, fence}
end
-- HGET on a key of another type raises WRONGTYPE and leaves the key untouched.
local owner = redis.call('HGET', KEYS[1], 'o')
if not owner then
  return redis.error_reply('WRONGTYPE the lock key holds a hash that is not a redis-mutex lock')
end
if owner == ARGV[1] then
  -- A releaser handed the lock to this token while its owner was asking for it.
  return {1, tonumber(redis.call('HGET', KEYS[1], 'f') or '0')}
end
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[1], 'w', '1')
  if redis.call('HGET', KEYS[1], 'c') ~= ARGV[4] then
    redis.call('HSET', KEYS[1], 'r', '1')
  end
end
return {0, redis.call('PTTL', KEYS[1])}
