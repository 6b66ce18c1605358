-- Shared by the scripts of read-write locks and semaphores (prepended to each).
-- KEYS[1] holders: a zset of owner tokens (the readers of a read-write lock, the
-- permits of a semaphore), each scored by the server-clock ms at which its lease ends.
-- KEYS[2] state: a hash with
--   'n'  the permit count of a semaphore in use (absent for a read-write lock),
--   'wo' / 'we' the writer's token and the server-clock ms its lease ends,
--   'q'  the queue of waiting tokens, space-separated, oldest first,
--   'e:<token>' per queued token: '<client id> <ms the entry ends> <r|w>' (r: a reader
--        or a permit, w: a writer).
-- Time is the server's (TIME): no client clock is stored. Expired holders, writer and
-- queue entries are dropped by the next script that looks; both keys expire when the
-- last lease or queue entry would have ended.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Plain digits (Redis formats a Lua number argument itself, not always as an integer).
local function int(n)
  return string.format('%.0f', n)
end

-- HMGET / HDEL over many fields, in slices (Lua's unpack has a limit).
local function hmget_many(key, fields)
  local out = {}
  for i = 1, #fields, 500 do
    local vals = redis.call('HMGET', key, unpack(fields, i, math.min(i + 499, #fields)))
    for _, v in ipairs(vals) do out[#out + 1] = v end
  end
  return out
end
local function hdel_many(key, fields)
  for i = 1, #fields, 500 do
    redis.call('HDEL', key, unpack(fields, i, math.min(i + 499, #fields)))
  end
end

-- The lock as it is at `now`, expired parts dropped (in Redis by `save_state`).
local function load_state(now)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  local f = redis.call('HMGET', KEYS[2], 'n', 'wo', 'we', 'q')
  local st = {now = now, n = tonumber(f[1] or '') or 0, queue = {}, entries = {}, dropped = {},
              touched = {}, queue_changed = false, writer_changed = false}
  if f[2] and f[2] ~= '' then
    if tonumber(f[3] or '0') > now then
      st.writer = f[2]; st.writer_end = tonumber(f[3])
    else
      st.writer_changed = true
    end
  end
  local tokens = {}
  for t in string.gmatch(f[4] or '', '%S+') do tokens[#tokens + 1] = t end
  if #tokens > 0 then
    local fields = {}
    for i, t in ipairs(tokens) do fields[i] = 'e:' .. t end
    local vals = hmget_many(KEYS[2], fields)
    for i, t in ipairs(tokens) do
      local client, ends, kind = string.match(vals[i] or '', '^(%S+) (%d+) ([rw])$')
      if client and tonumber(ends) > now then
        st.queue[#st.queue + 1] = t
        st.entries[t] = {client = client, ends = tonumber(ends), kind = kind}
      else
        st.dropped[#st.dropped + 1] = fields[i]
        st.queue_changed = true
      end
    end
  end
  st.held = redis.call('ZCARD', KEYS[1])
  return st
end

local function queue_index(st, token)
  for i, t in ipairs(st.queue) do
    if t == token then return i end
  end
  return nil
end

local function drop_entry(st, i)
  local t = table.remove(st.queue, i)
  st.entries[t] = nil
  st.touched[t] = nil
  st.dropped[#st.dropped + 1] = 'e:' .. t
  st.queue_changed = true
  return t
end

-- Whether `token` holds the lock now (reader, permit or writer).
local function holds(st, token)
  if st.writer == token then return true end
  return redis.call('ZSCORE', KEYS[1], token) ~= false
end

-- Releases what `token` holds; whether it held anything.
local function release_token(st, token)
  if st.writer == token then
    st.writer = nil; st.writer_changed = true
    return true
  end
  if redis.call('ZREM', KEYS[1], token) == 1 then
    st.held = st.held - 1
    return true
  end
  return false
end

-- Grants the lock to the waiters at the head of the queue that it admits now: none
-- while a writer holds; a writer at the head once no reader holds (it alone); else
-- every reader up to the next writer, at most as many as permits are free. Each grant
-- has a short lease (`grant_ms`), which its waiter's renewal lengthens. Their clients
-- are told on their channels ('^<token>,<token>... <name>'), except the caller's own
-- (`self_client`): its grants are in `st.local_grants` for the script's reply, and the
-- caller wakes those threads itself (not `self_token`, the caller, whose reply tells
-- it). The first waiter left in the queue is told to look again when those grants
-- would run out untaken ('~<ms> <token> <name>'), when one of them went to another
-- client than its own: a grantee that crashed costs the queue one `grant_ms` (a
-- grantee of its own client crashes with it). Nothing is published when nobody is
-- granted.
-- `publish` is the command that does it: 'PUBLISH', or on a cluster 'SPUBLISH' (then
-- `channels` is the lock's own prefix, in its slot: see release.lua).
local function grant_heads(st, grant_ms, channels, name, self_token, self_client, publish)
  st.local_grants = st.local_grants or {}
  if st.writer then return end
  local free = math.huge
  if st.n > 0 then free = st.n - st.held end
  local to_client, clients, grantees = {}, {}, {}
  local granted = false
  local ends = st.now + grant_ms
  while #st.queue > 0 do
    local t = st.queue[1]
    local e = st.entries[t]
    if e.kind == 'w' then
      if st.held > 0 or granted then break end
      st.writer = t; st.writer_end = ends; st.writer_changed = true
    else
      if free <= 0 then break end
      free = free - 1
      redis.call('ZADD', KEYS[1], int(ends), t)
      st.held = st.held + 1
    end
    drop_entry(st, 1)
    granted = true
    grantees[e.client] = true
    if e.client == self_client then
      if t ~= self_token then st.local_grants[#st.local_grants + 1] = t end
    else
      if not to_client[e.client] then
        to_client[e.client] = {}
        clients[#clients + 1] = e.client
      end
      local list = to_client[e.client]
      list[#list + 1] = t
    end
    if e.kind == 'w' then break end
  end
  for _, c in ipairs(clients) do
    redis.call(publish, channels .. c, '^' .. table.concat(to_client[c], ',') .. ' ' .. name)
  end
  local nxt = st.queue[1]
  if granted and nxt and nxt ~= self_token then
    local client = st.entries[nxt].client
    local elsewhere = false
    for c, _ in pairs(grantees) do
      if c ~= client then elsewhere = true end
    end
    if elsewhere then
      redis.call(publish, channels .. client, '~' .. grant_ms .. ' ' .. nxt .. ' ' .. name)
    end
  end
end

-- Whether a thread of another client than `client` is queued now (1 or 0): a client
-- hands permits and write locks on in memory, and its readers join its read shares,
-- only while it knows that nobody else waits.
local function others_queued(st, client)
  for _, t in ipairs(st.queue) do
    if st.entries[t].client ~= client then return 1 end
  end
  return 0
end

-- `head` followed by the tokens granted to the caller's own client (see grant_heads).
local function reply(st, head)
  for _, t in ipairs(st.local_grants or {}) do head[#head + 1] = t end
  return head
end

-- Writes back what changed, and sets both keys to live until the last lease or queue
-- entry ends (both deleted when nothing is left).
local function save_state(st, n_changed)
  if #st.dropped > 0 then hdel_many(KEYS[2], st.dropped) end
  local fields = {}
  local function put(k, v) fields[#fields + 1] = k; fields[#fields + 1] = v end
  if st.queue_changed then put('q', table.concat(st.queue, ' ')) end
  for t, _ in pairs(st.touched) do
    local e = st.entries[t]
    put('e:' .. t, e.client .. ' ' .. int(e.ends) .. ' ' .. e.kind)
  end
  if n_changed then put('n', st.n) end
  if st.writer_changed then
    if st.writer then
      put('wo', st.writer); put('we', int(st.writer_end))
    else
      redis.call('HDEL', KEYS[2], 'wo', 'we')
    end
  end
  if #fields > 0 then redis.call('HSET', KEYS[2], unpack(fields)) end
  local horizon = 0
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if last[2] then horizon = tonumber(last[2]) end
  if st.writer then horizon = math.max(horizon, st.writer_end) end
  for _, t in ipairs(st.queue) do horizon = math.max(horizon, st.entries[t].ends) end
  if horizon <= st.now then
    redis.call('DEL', KEYS[1], KEYS[2])
  else
    redis.call('PEXPIRE', KEYS[1], int(horizon - st.now))
    redis.call('PEXPIRE', KEYS[2], int(horizon - st.now))
  end
end
