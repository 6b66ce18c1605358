-- A waiter gives up: it leaves the queue, and a grant made to it meanwhile is
-- released (passed on).
-- KEYS[1] holders, KEYS[2] state (see shared.lua)
-- ARGV[1] token, ARGV[2] grant ms, ARGV[3] the clients' channel prefix, ARGV[4] the
-- lock's name, ARGV[5] the caller's client id, ARGV[6] the command that publishes to a
-- client (see grant_heads)
-- Returns {2, o, ...} a grant was released, {1, o, ...} left the queue, {0, o} was not
-- queued; o: 1 when a thread of another client is queued (see others_queued); after
-- the first two: the tokens of the caller's client this granted the lock to.
local st = load_state(now_ms())
local outcome = 0
if release_token(st, ARGV[1]) then
  outcome = 2
else
  local i = queue_index(st, ARGV[1])
  if i then
    drop_entry(st, i)
    outcome = 1
  end
end
-- The head may have been what kept the waiters behind it out.
if outcome > 0 then grant_heads(st, tonumber(ARGV[2]), ARGV[3], ARGV[4], '', ARGV[5], ARGV[6]) end
save_state(st, false)
return reply(st, {outcome, others_queued(st, ARGV[5])})
