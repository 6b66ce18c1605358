-- Release on one Redlock master, owner-checked; tells the waiting clients.
-- KEYS[1] lock hash
-- ARGV[1] token, ARGV[2] caller's client id, ARGV[3] the round whose vote to take
-- back ('' = whichever: the holder's release), ARGV[4] the clients' channel prefix
-- (`<prefix>:<db>:c:`; '' = tell nobody: a failed attempt's vote, whose waiters look
-- again soon anyway), ARGV[5] the lock's name
-- Returns 0 not the caller's (or another round's) here, else 1 + the clients told.
-- Unlike the single-server release, nothing is granted: each master would grant to its
-- own first waiter and no client would reach a quorum. Every client in `q` is told
-- (`-<token> <name>`, the token telling this release's copies from each master apart)
-- and their first waiters compete.
local held = redis.call('HMGET', KEYS[1], 'o', 'r', 'q')
if held[1] ~= ARGV[1] or (ARGV[3] ~= '' and held[2] ~= ARGV[3]) then
  return 0
end
redis.call('DEL', KEYS[1])
local told = 0
if ARGV[4] ~= '' and held[3] then
  for e in string.gmatch(held[3], '%S+') do
    local id = entry_id(e)
    if id ~= ARGV[2] then
      redis.call('PUBLISH', ARGV[4] .. id, '-' .. ARGV[1] .. ' ' .. ARGV[5])
      told = told + 1
    end
  end
end
return 1 + told
