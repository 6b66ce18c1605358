-- Delete the lock whoever holds it, and wake every client's waiters.
-- KEYS[1] lock hash; ARGV[1] the broadcast channel (`<prefix>:<db>:all`), ARGV[2] the
-- lock's name. Returns 1 deleted, 0 nothing to delete.
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then
  return 0
end
if kind ~= 'hash' then
  return redis.error_reply('WRONGTYPE the lock key holds a ' .. kind .. ', not a redis-mutex lock')
end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[1], '*' .. ARGV[2])
return 1
