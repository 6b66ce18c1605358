-- Extend the lease only while the caller still owns the lock.
-- KEYS[1] lock hash; ARGV[1] token, ARGV[2] lease ms. Returns 1 extended, 0 not the owner.
if redis.call('HGET', KEYS[1], 'o') == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
