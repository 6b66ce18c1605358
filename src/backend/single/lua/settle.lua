-- Settle a grant whose announcement release.lua held back (`wait_replicas`): the
-- releaser ran WAIT on its connection right after the release, and now announces the
-- grant to its client if enough replicas acknowledged it, or revokes it.
-- KEYS[1] lock hash
-- ARGV[1] the grant's owner token, ARGV[2] '1' = acknowledged, ARGV[3] replicas that
-- acknowledged, ARGV[4] the clients' channel prefix (`<prefix>:<db>:c:`, or on a cluster
-- the lock's own `<prefix>:{<name>}:c:`), ARGV[5] the lock's name, ARGV[6] the command
-- that publishes to a client ('PUBLISH', or 'SPUBLISH' on a cluster: see release.lua)
-- Returns 1 announced, 2 revoked, 0 nothing to settle (the grant ran out and someone
-- else took the lock, or it was force-unlocked).
local held = redis.call('HMGET', KEYS[1], 'o', 'gt', 'ge', 'f', 'q')
if held[1] ~= ARGV[1] or unset(held[3]) then
  return 0
end
local id, span, mark = queue_pop(held[3])
if ARGV[2] == '1' and not grant_over(KEYS[1], held[2]) then
  redis.call('HSET', KEYS[1], 'ge', '')
  local fence = '0'
  if span > 0 then fence = held[4] end
  redis.call(ARGV[6], ARGV[4] .. id, '!' .. ARGV[1] .. ' ' .. fence .. ' ' .. mark .. ' ' .. ARGV[3] .. ' ' .. ARGV[5])
  return 1
end
-- Revoked (too few replicas, or the grant ran out meanwhile): the grantee was never
-- told, so nobody relies on it. The lock is free again with the grantee first in the
-- queue, and the grantee is told to look again now (`*`: its first waiter attempts).
local queue = held[5] or ''
if not queue_has(queue, id) then
  if queue == '' then queue = held[3] else queue = held[3] .. ' ' .. queue end
end
redis.call('HSET', KEYS[1], 'o', '', 'c', '', 'gt', '', 'ge', '', 'w', '', 'h', 0, 'q', queue)
redis.call(ARGV[6], ARGV[4] .. id, '*' .. ARGV[5])
return 2
