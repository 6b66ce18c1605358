-- The caller's client has no waiter left for this lock: leave the queue, and pass a
-- reservation held for the client on to the next waiting client.
-- KEYS[1] lock hash; ARGV[1] client id, ARGV[2] reservation ms
-- Returns 0 nothing to do, 1 left the queue, 2 passed the reservation on, 3 deleted it.
local held = redis.call('HMGET', KEYS[1], 'o', 'g', 'q')
local me = ARGV[1]
local queue = queue_without(held[3], me)
if unset(held[1]) and held[2] == me then
  if queue == '' then
    redis.call('DEL', KEYS[1])
    return 3
  end
  local nxt, rest = queue_pop(queue)
  local gt = math.max(redis.call('PTTL', KEYS[1]) - tonumber(ARGV[2]), 0)
  redis.call('HSET', KEYS[1], 'g', nxt, 'q', rest, 'gt', gt)
  redis.call('PUBLISH', KEYS[1], '>' .. nxt)
  return 2
end
if held[3] and queue ~= held[3] then
  redis.call('HSET', KEYS[1], 'q', queue)
  return 1
end
return 0
