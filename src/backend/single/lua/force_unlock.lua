-- Delete the lock whoever holds it, and wake every client's waiters.
-- KEYS[1] lock hash; ARGV[1] the broadcast channel (`<prefix>:<db>:all`), ARGV[2] the
-- lock's name, ARGV[3] '' = broadcast on ARGV[1] (one server), or the command that
-- publishes to one client ('SPUBLISH', a cluster), ARGV[4] with it, the lock's own
-- clients' channel prefix (`<prefix>:{<name>}:c:`): then each client that waits for the
-- lock is told, which is the holder's own client (`c`: its waiters set `w`) and every
-- client in the queue `q`; a cluster's sharded channels are per lock, so a broadcast
-- would reach no one there.
-- Returns 1 when someone held it (an owner, or a client it was granted to), 0 when not:
-- no key, or one that holds only the queue of waiting clients (a grant nobody took ran
-- out, a revoked grant, Redlock's queues on masters that voted for no one), which is
-- deleted all the same and its waiters told.
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then
  return 0
end
if kind ~= 'hash' then
  return redis.error_reply('WRONGTYPE the lock key holds a ' .. kind .. ', not a redis-mutex lock')
end
local held = redis.call('HMGET', KEYS[1], 'c', 'q', 'o')
local owned = (held[3] and held[3] ~= '') and 1 or 0
if ARGV[3] == '' then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[1], '*' .. ARGV[2])
  return owned
end
redis.call('DEL', KEYS[1])
local told = {}
local function tell(id)
  if id and id ~= '' and not told[id] then
    told[id] = true
    redis.call(ARGV[3], ARGV[4] .. id, '*' .. ARGV[2])
  end
end
tell(held[1])
for e in string.gmatch(held[2] or '', '%S+') do
  tell(string.match(e, '^([^:]+)'))
end
return owned
