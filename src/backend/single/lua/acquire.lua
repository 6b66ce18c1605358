-- Acquire: one round trip.
-- KEYS[1] lock hash, KEYS[2] fence counter
-- ARGV[1] token, ARGV[2] lease ms, ARGV[3] fencing tokens to take ('0' = no fencing:
-- the caller's is the first, the rest are for handing the lock on inside its client),
-- ARGV[4] caller's client id, ARGV[5] '1' = the caller will wait (joins the queue)
-- Returns {1, fence} when the caller holds the lock, {0, pttl} when someone else does,
-- {2, ms} when it is reserved for another client for ms more.
-- One HMGET reads everything; on a key of another type it raises WRONGTYPE and the
-- key is left untouched.
local held = redis.call('HMGET', KEYS[1], 'o', 'c', 'f', 'g', 'q', 'w', 'gt')
local me = ARGV[4]
if unset(held[1]) then
  if not unset(held[4]) and held[4] ~= me then
    -- Passed to another waiting client: reserved for it while PTTL > gt.
    local left = redis.call('PTTL', KEYS[1]) - tonumber(held[7] or '0')
    if left > 0 then
      if ARGV[5] == '1' and not queue_has(held[5], me) then
        redis.call('HSET', KEYS[1], 'q', queue_push(held[5], me))
      end
      return {2, left}
    end
    -- That client did not come in time: free for anyone, the queue kept.
  end
  local fence = 0
  local fields = {'o', ARGV[1], 'c', me}
  local span = tonumber(ARGV[3])
  if span > 0 then
    fence = take_fence(KEYS[2], span)
    fields[#fields + 1] = 'f'; fields[#fields + 1] = integer_text(fence)
  end
  if held[4] then fields[#fields + 1] = 'g'; fields[#fields + 1] = '' end
  if held[5] then fields[#fields + 1] = 'q'; fields[#fields + 1] = queue_without(held[5], me) end
  redis.call('HSET', KEYS[1], unpack(fields))
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, fence}
end
if held[1] == ARGV[1] then
  -- A releaser handed the lock to this token while its owner was asking for it.
  return {1, tonumber(held[3] or '0')}
end
if ARGV[5] == '1' then
  if held[2] == me then
    -- A waiter of the holder's own client: the holder hands over directly.
    if unset(held[6]) then redis.call('HSET', KEYS[1], 'w', '1') end
  elseif not queue_has(held[5], me) then
    redis.call('HSET', KEYS[1], 'q', queue_push(held[5], me))
  end
end
return {0, redis.call('PTTL', KEYS[1])}
