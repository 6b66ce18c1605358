-- The caller's client has no waiter left for this lock: it leaves the queue. (A grant
-- made to it meanwhile is released by its notifier, which hears the grant's token.)
-- KEYS[1] lock hash; ARGV[1] client id
-- Returns 1 left the queue, 0 was not in it.
local q = redis.call('HMGET', KEYS[1], 'q')[1]
local queue = queue_without(q, ARGV[1])
if q and queue ~= q then
  redis.call('HSET', KEYS[1], 'q', queue)
  return 1
end
return 0
