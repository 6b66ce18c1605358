-- Acquire, continued (see acquire.lua): the lock is held, granted, free with a queue,
-- or its owner field was emptied (a revoked grant). `held` and `me` are acquire.lua's.
-- PTTL is read at most once: here for a grant (see grant_over), else for the answer.
local pttl
if not unset(held[6]) then pttl = redis.call('PTTL', KEYS[1]) end
if unset(held[1]) or (pttl and pttl <= tonumber(held[6])) then
  -- Free, or granted to a client that did not take it in time: the queue is kept.
  -- (A grant to the caller's own client is not for this attempt to take, even before
  -- `gt` is cleared: the waiter its message reached may hold it already.)
  local extra = {}
  if held[4] then
    extra[#extra + 1] = 'q'; extra[#extra + 1] = queue_without(held[4], me)
    extra[#extra + 1] = 'h'; extra[#extra + 1] = 0
  end
  if held[5] then extra[#extra + 1] = 'w'; extra[#extra + 1] = '' end
  if held[6] then extra[#extra + 1] = 'gt'; extra[#extra + 1] = '' end
  return take(extra)
end
if held[1] == ARGV[1] then
  -- A releaser of the caller's client handed the lock to this token while it was
  -- asking: the lease starts again now, later than this request was sent.
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, tonumber(held[3] or '0')}
end
if not pttl then pttl = redis.call('PTTL', KEYS[1]) end
if not unset(held[6]) then
  -- A grant not taken yet ends sooner than the hash.
  pttl = pttl - tonumber(held[6])
end
if ARGV[5] == '1' then
  if held[2] == me then
    -- The holder's own client (or a grant to it not taken yet): handed on inside it.
    if unset(held[5]) then redis.call('HSET', KEYS[1], 'w', '1') end
  else
    -- The caller sleeps `pttl` (and its jitter) at most before it looks again: its
    -- entry says until when (see release.lua: the notice to look again).
    local look
    if pttl >= 0 then look = now_ms() + pttl end
    local q = queue_set_look(held[4], me, look) or queue_push(held[4], me, ARGV[3], ARGV[6], look)
    redis.call('HSET', KEYS[1], 'q', q)
  end
end
return {0, pttl}
