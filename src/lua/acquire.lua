-- Acquire: one round trip.
-- KEYS[1] lock hash, KEYS[2] fence counter
-- ARGV[1] token, ARGV[2] lease ms, ARGV[3] '1' = fencing,
-- ARGV[4] caller's client id, ARGV[5] '1' = the caller will wait (mark the holder)
-- Returns {1, fence} when the caller holds the lock, {0, pttl} when someone else does,
-- {2, pttl} when it is reserved for clients other than the caller's.
-- One HMGET reads everything; on a key of another type it raises WRONGTYPE and the
-- key is left untouched.
local held = redis.call('HMGET', KEYS[1], 'o', 'c', 'f', 'x')
local owner = held[1]
if not owner then
  if held[4] then
    -- Reserved: a client released to everyone after a chain of handoffs; for a few
    -- milliseconds only the other clients may take it.
    if held[4] == ARGV[4] then
      return {2, redis.call('PTTL', KEYS[1])}
    end
    redis.call('DEL', KEYS[1])
    -- Tell the excluded client (only) that another client took the lock, so its
    -- first waiter marks the new holder instead of waiting out the reservation.
    redis.call('PUBLISH', KEYS[1], '>' .. held[4])
  end
  if ARGV[3] == '1' then
    local fence = redis.call('INCR', KEYS[2])
    redis.call('HSET', KEYS[1], 'o', ARGV[1], 'c', ARGV[4], 'f', fence)
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, fence}
  end
  redis.call('HSET', KEYS[1], 'o', ARGV[1], 'c', ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, 0}
end
if owner == ARGV[1] then
  -- A releaser handed the lock to this token while its owner was asking for it.
  return {1, tonumber(held[3] or '0')}
end
if ARGV[5] == '1' then
  if held[2] == ARGV[4] then
    redis.call('HSET', KEYS[1], 'w', '1')
  else
    -- 'r': a client other than the holder's waits; bounds handoffs inside the holder's client.
    redis.call('HSET', KEYS[1], 'w', '1', 'r', '1')
  end
end
return {0, redis.call('PTTL', KEYS[1])}
