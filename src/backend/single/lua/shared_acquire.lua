-- Acquire a reader, the writer or a permit: one round trip.
-- KEYS[1] holders, KEYS[2] state (see shared.lua)
-- ARGV[1] token, ARGV[2] lease ms, ARGV[3] 'r' (a reader or a permit) or 'w' (the
-- writer), ARGV[4] permits (a semaphore's count; '0': a read-write lock), ARGV[5] the
-- caller's client id, ARGV[6] '1' = queue the caller if it is not admitted, ARGV[7] how
-- long its queue entry lasts without another attempt (ms), ARGV[8] grant ms, ARGV[9]
-- the clients' channel prefix (`<prefix>:<db>:c:`), ARGV[10] the lock's name, ARGV[11]
-- the command that publishes to a client (see grant_heads)
-- Returns {1, 0, o, ...} the caller holds it (lease ARGV[2] from now), {0, ms, o, ...}
-- not admitted: a lease or a grant ends by itself within ms (-1: none does), {-1, n}
-- the semaphore is in use with n permits, not ARGV[4] (nothing is written). o: 1 when
-- a thread of another client is queued (see others_queued). After the first three:
-- the tokens of the caller's client this attempt granted the lock to.
local now = now_ms()
local st = load_state(now)
local token, lease, kind, permits = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local n_changed = false
if permits > 0 and st.n ~= permits then
  if st.n > 0 and (st.held > 0 or #st.queue > 0) then
    return {-1, st.n}
  end
  st.n = permits; n_changed = true
end
-- Room freed by a lease that ran out is announced by nobody: grant it now.
grant_heads(st, tonumber(ARGV[8]), ARGV[9], ARGV[10], token, ARGV[5], ARGV[11])
if holds(st, token) then
  -- Granted just now or before, or a retried attempt whose first try acquired: the
  -- lease runs from now.
  if st.writer == token then
    st.writer_end = now + lease; st.writer_changed = true
  else
    redis.call('ZADD', KEYS[1], 'XX', int(now + lease), token)
  end
  local i = queue_index(st, token)
  if i then drop_entry(st, i) end
  save_state(st, n_changed)
  return reply(st, {1, 0, others_queued(st, ARGV[5])})
end
if not st.entries[token] and #st.queue == 0 and not st.writer then
  local admitted
  if kind == 'w' then admitted = st.held == 0 else admitted = st.n == 0 or st.held < st.n end
  if admitted then
    if kind == 'w' then
      st.writer = token; st.writer_end = now + lease; st.writer_changed = true
    else
      redis.call('ZADD', KEYS[1], int(now + lease), token)
      st.held = st.held + 1
    end
    save_state(st, n_changed)
    return reply(st, {1, 0, others_queued(st, ARGV[5])})
  end
end
if ARGV[6] == '1' then
  if not st.entries[token] then
    st.queue[#st.queue + 1] = token
    st.queue_changed = true
  end
  st.entries[token] = {client = ARGV[5], ends = now + tonumber(ARGV[7]), kind = kind}
  st.touched[token] = true
end
save_state(st, n_changed)
local wait = -1
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if first[2] then wait = tonumber(first[2]) - now end
if st.writer and (wait < 0 or st.writer_end - now < wait) then wait = st.writer_end - now end
return reply(st, {0, wait, others_queued(st, ARGV[5])})
