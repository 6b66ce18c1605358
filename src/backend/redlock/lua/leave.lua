-- The caller's client has no waiter left for this Redlock lock: it leaves the queue,
-- and a name it was given passes to the next waiting client (nominate.lua), who is
-- told. Also run by a client told it was named while none of its threads waits.
-- KEYS[1] lock hash; ARGV[1] client id, ARGV[2] the clients' channel prefix, ARGV[3]
-- the lock's name, ARGV[4] the window (ms) of the name passed on
-- Returns 1 left the queue or passed a name on, 0 neither.
local held = redis.call('HMGET', KEYS[1], 'o', 'q', 'n')
local q = held[2]
local queue = queue_without(q, ARGV[1])
if unset(held[1]) and held[3] == ARGV[1] then
  -- The release named it: the name goes to the next (the token tells this message
  -- from the release's copies).
  name_next(KEYS[1], queue, ARGV[1], ARGV[4], ARGV[2], 'passed-' .. ARGV[1], ARGV[3])
  return 1
end
if q and queue ~= q then
  redis.call('HSET', KEYS[1], 'q', queue)
  return 1
end
return 0
