-- Extend the lease only while the caller still owns the lock; a grant to the caller's
-- client becomes an ordinary lease.
-- KEYS[1] lock hash; ARGV[1] token, ARGV[2] lease ms. Returns 1 extended, 0 not the owner.
local held = redis.call('HMGET', KEYS[1], 'o', 'gt')
if held[1] == ARGV[1] and not grant_over(KEYS[1], held[2]) then
  if not unset(held[2]) then redis.call('HSET', KEYS[1], 'gt', '') end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
