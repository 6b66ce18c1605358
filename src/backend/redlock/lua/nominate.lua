-- Shared by the Redlock release and leave (prepended to each): the soft grant.
-- When a lock is released while clients wait, the waiting client that comes next in
-- the cyclic order of client ids after the releaser's is *named*: for a short window
-- only it may take this master's vote (others are answered as held by `~<its id>`),
-- and only it is told. Every master applies the same rule to its own queue, so when
-- the queues agree (the waiters attempt on every master at once), the masters name the
-- same client, whose one attempt then takes them all: no split votes, and the waiting
-- clients take turns. The quorum still decides: a name is no vote, and it lapses.
-- Fields: `q` (the queue, which outlives a release: clients stay queued, and are
-- told when named), `n` (the named client id), `t` (server time in ms when the name
-- lapses).

-- The owner's fields, emptied (`unset`): cleared by HSET rather than HDEL, so that the
-- README's ACL line needs no command more than the single server's.
local NO_OWNER = {'o', '', 'c', '', 'r', '', 'f', '', 'w', ''}

local function now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

-- The client in queue `q` that comes next after `me` in the cyclic order of ids.
local function next_after(q, me)
  local after, lowest
  for e in string.gmatch(q or '', '%S+') do
    local id = entry_id(e)
    if id ~= me then
      if id > me and (not after or id < after) then after = id end
      if not lowest or id < lowest then lowest = id end
    end
  end
  return after or lowest
end

-- Names the client after `me` in `q` (leaving the queue: it is told now) for
-- `window` ms, telling it on `prefix` (`-<token> <name>`). Without a client to name,
-- the key is deleted. Returns 1 when a client was named and told, else 0.
local function name_next(key, q, me, window, prefix, token, name)
  local n = next_after(q, me)
  if not n then
    redis.call('DEL', key)
    return 0
  end
  local ends = string.format('%.0f', now_ms() + tonumber(window))
  redis.call('HSET', key, 'q', queue_without(q, n), 'n', n, 't', ends, unpack(NO_OWNER))
  if prefix ~= '' then
    redis.call('PUBLISH', prefix .. n, '-' .. token .. ' ' .. name)
  end
  return 1
end
