-- Release: hand the lock to a waiter of the caller's client, grant it to the client
-- that has waited longest, or delete it. The script is fence.lua, this file, queue.lua,
-- then release_queued.lua: the owner's release while nobody is queued and the lock is
-- no grant (the uncontended case) returns here, before the queue helpers are defined
-- (see acquire.lua).
-- KEYS[1] lock hash, KEYS[2] fence counter
-- ARGV[1] token, ARGV[2] caller's client id,
-- ARGV[3] next owner's token in the caller's client ('' = no local waiter),
-- ARGV[4] its lease ms, ARGV[5] fencing tokens it takes ('0' = no fencing),
-- ARGV[6] handoff limit, ARGV[7] grant ms, ARGV[8] caller's lease ms,
-- ARGV[9] handoffs the caller's tenure made inside its client without a round trip,
-- ARGV[10] the owner token of a grant to another client, ARGV[11] the clients' channel
-- prefix (`<prefix>:<db>:c:`), ARGV[12] the lock's name, ARGV[13] the caller client's
-- mark for queueing again (see queue.lua), ARGV[14] '1' = hold a grant's announcement
-- back until replicas acknowledged it (`wait_replicas`: WAIT cannot run in a script),
-- ARGV[15] the command that publishes to a client: 'PUBLISH' (one server: ARGV[11] is
-- server-wide) or 'SPUBLISH' (a cluster: ARGV[11] is the lock's own, `<prefix>:{<name>}:c:`,
-- in the lock's slot, as a script's SPUBLISH must be)
-- Returns {0, 0} not the owner, {1, 0} deleted, {2, fence, turn} handed over (turn: the
-- handoffs of the client's turn so far, 0 while nobody else waits), {3, 0} granted to
-- the next waiting client, {4, 0} granted, its announcement held back for settle.lua.
local held = redis.call('HMGET', KEYS[1], 'o', 'h', 'q', 'gt')
-- Hands the lock to the caller client's next waiter (ARGV[3]) with `turn` (0 while
-- nobody else waits: there is no turn to count).
local function hand_over(turn)
  local fields = {'o', ARGV[3], 'h', turn}
  if held[4] then fields[#fields + 1] = 'gt'; fields[#fields + 1] = '' end
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
if held[1] == ARGV[1] and (not held[3] or held[3] == '') and (not held[4] or held[4] == '') then
  -- The owner, nobody queued, no grant: hand over inside the client, or delete.
  if ARGV[3] ~= '' then return hand_over(0) end
  redis.call('DEL', KEYS[1])
  return {1, 0}
end
