-- Release on one Redlock master, owner-checked.
-- KEYS[1] lock hash
-- ARGV[1] token, ARGV[2] caller's client id, ARGV[3] the round whose vote to take
-- back ('' = whichever: the holder's release), ARGV[4] the clients' channel prefix
-- (`<prefix>:<db>:c:`; '' = tell nobody), ARGV[5] the lock's name, ARGV[6] how long
-- (ms) a client named by the holder's release has the lock to itself, ARGV[7] '1' = the
-- caller's client: after the holder's release, no thread of it waits any more (it
-- leaves the queue where it is not the owner: an attempt that won elsewhere queued it
-- here); after a take-back, it waits on (it stays queued here, as on the masters
-- where its attempt found the lock held, so that every master can name it).
-- Returns 0 not the caller's (or another round's) here, else 1 + the clients told.
-- Unlike the single-server release, nothing is granted: each master would grant to its
-- own first waiter and no client would reach a quorum. The holder's release names
-- the next waiting client instead (nominate.lua), which alone is told; the others stay
-- queued. A failed attempt's take-back keeps the queue too, and when it is loud
-- (`ARGV[4]` set: a client may have seen the attempt's votes as a majority, and sleep
-- until told) names the lowest queued id, which is told.
local held = redis.call('HMGET', KEYS[1], 'o', 'r', 'q', 'n')
if held[1] ~= ARGV[1] or (ARGV[3] ~= '' and held[2] ~= ARGV[3]) then
  if ARGV[3] == '' and ARGV[7] == '1' then
    local queue = queue_without(held[3], ARGV[2])
    if unset(held[1]) and held[4] == ARGV[2] then
      -- Named here after its attempt won elsewhere: the name passes on.
      name_next(KEYS[1], queue, ARGV[2], ARGV[6], ARGV[4], 'passed-' .. ARGV[2], ARGV[5])
    elseif held[3] and queue ~= held[3] then
      redis.call('HSET', KEYS[1], 'q', queue)
    end
  end
  return 0
end
if ARGV[3] == '' then
  return 1 + name_next(KEYS[1], held[3], ARGV[2], ARGV[6], ARGV[4], ARGV[1], ARGV[5])
end
local q = held[3]
if ARGV[7] == '1' and not queue_has(q, ARGV[2]) then
  q = queue_push(q, ARGV[2], 0, 0)
  redis.call('HSET', KEYS[1], 'q', q)
end
if ARGV[4] ~= '' then
  -- Loud: a client may sleep on these votes as a holder's. One queued client is named
  -- and told, as by a release: the lowest id, the caller's included, an order that
  -- does not depend on the caller, so that two clients whose rounds split (with one
  -- master silent, every split is loud) do not name each other round after round.
  return 1 + name_next(KEYS[1], q, '', ARGV[6], ARGV[4], ARGV[1], ARGV[5])
end
if unset(q) then
  redis.call('DEL', KEYS[1])
else
  redis.call('HSET', KEYS[1], unpack(NO_OWNER))
end
return 1
