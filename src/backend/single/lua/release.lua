-- Release: hand the lock to a waiter of the caller's client, pass it to the next
-- waiting client, or delete it.
-- KEYS[1] lock hash, KEYS[2] fence counter
-- ARGV[1] token, ARGV[2] caller's client id,
-- ARGV[3] next owner's token ('' = no local waiter), ARGV[4] next lease ms,
-- ARGV[5] fencing tokens the next owner takes ('0' = no fencing), ARGV[6] handoff limit,
-- ARGV[7] reservation ms, ARGV[8] caller's lease ms, ARGV[9] handoffs the caller's
-- tenure made inside its client without a round trip
-- Returns {0, 0} not the owner, {1, 0} deleted, {2, fence, turn} handed over (turn: the
-- handoffs of the client's turn so far, 0 while nobody else waits), {3, 0} passed to
-- the next waiting client.
local held = redis.call('HMGET', KEYS[1], 'o', 'h', 'q')
if held[1] ~= ARGV[1] then
  return {0, 0}
end
local queue = queue_without(held[3], ARGV[2])
if ARGV[3] ~= '' then
  -- The client's turn counts every handoff inside it, through Redis (`h`) or not, so
  -- that it is bounded however its threads' tenures are cut.
  local turn = tonumber(held[2] or '0') + tonumber(ARGV[9])
  if queue == '' or turn < tonumber(ARGV[6]) then
    -- While nobody else waits there is no turn to count.
    if queue == '' then turn = 0 else turn = turn + 1 end
    local fields = {'o', ARGV[3], 'h', turn}
    local fence = 0
    local span = tonumber(ARGV[5])
    if span > 0 then
      fence = take_fence(KEYS[2], span)
      fields[#fields + 1] = 'f'; fields[#fields + 1] = integer_text(fence)
    end
    redis.call('HSET', KEYS[1], unpack(fields))
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
    return {2, fence, turn}
  end
end
if queue ~= '' then
  -- Reserved for the client that has waited longest, for ARGV[7] ms; the queue lives
  -- as long as the caller's lease would have, so that the others, whose sleeps that
  -- lease bounds, still find it. The caller's client queues at the back if it has
  -- waiters itself.
  local nxt, rest = queue_pop(queue)
  if ARGV[3] ~= '' then rest = queue_push(rest, ARGV[2]) end
  local ttl = math.max(tonumber(ARGV[8]), tonumber(ARGV[7]))
  redis.call('HSET', KEYS[1], 'o', '', 'c', '', 'h', 0, 'w', '', 'g', nxt, 'q', rest, 'gt', ttl - tonumber(ARGV[7]))
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PUBLISH', KEYS[1], '>' .. nxt)
  return {3, 0}
end
redis.call('DEL', KEYS[1])
return {1, 0}
