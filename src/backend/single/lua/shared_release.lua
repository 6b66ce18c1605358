-- Release what a token holds (a reader, the writer, a permit), granting the lock to
-- the waiters that this lets in.
-- KEYS[1] holders, KEYS[2] state (see shared.lua)
-- ARGV[1] token, ARGV[2] grant ms, ARGV[3] the clients' channel prefix, ARGV[4] the
-- lock's name, ARGV[5] the caller's client id, ARGV[6] the command that publishes to a
-- client (see grant_heads)
-- Returns {1, o, ...} released, {0, o} the token held nothing (its lease ran out); o: 1
-- when a thread of another client is queued (see others_queued); after the first two:
-- the tokens of the caller's client the release granted the lock to.
local st = load_state(now_ms())
local released = release_token(st, ARGV[1])
if released then grant_heads(st, tonumber(ARGV[2]), ARGV[3], ARGV[4], '', ARGV[5], ARGV[6]) end
save_state(st, false)
if released then return reply(st, {1, others_queued(st, ARGV[5])}) end
return {0, others_queued(st, ARGV[5])}
