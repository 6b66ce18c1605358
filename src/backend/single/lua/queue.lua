-- Shared by the scripts below (prepended to each).
-- The queue of waiting clients, field `q`: space-separated entries
-- `<client id>:<span>:<mark>[:<look>]`, oldest first. `span` is the number of fencing
-- tokens a grant to that client takes (0 without fencing); `mark` is the client's name
-- for the request that queued it, echoed in the grant so that the client can tell a
-- grant of this queueing from a late one of an earlier queueing; `look` (server time,
-- ms), when known, is when the client looks at the lock again at the latest: the end
-- of the sleep the attempt that queued it set (its reply's PTTL), or of the look-again
-- notice it was sent (release.lua sends one only when that is too late).
-- Every helper works with plain `string.find` and `string.sub` (C loops over the
-- bytes) and parses only the entry it needs: a queue of 63 clients is ~2.5 KB, and
-- matching it with patterns entry by entry (`gmatch`) cost Redis ~35 µs per script
-- call (see ARCHITECTURE "What a handoff to another process costs").
local function entry_id(e)
  return string.match(e, '^([^:]+)')
end
-- The first and last byte of client `id`'s entry in `q`, or nil. An entry begins the
-- queue or follows a space; its id ends at ':', a space or the end of the queue.
local function queue_find(q, id)
  if not q or id == '' then return nil end
  local from = 1
  while true do
    local s, e = string.find(q, id, from, true)
    if not s then return nil end
    local after = string.byte(q, e + 1)
    if (s == 1 or string.byte(q, s - 1) == 32) and (not after or after == 58 or after == 32) then
      local space = string.find(q, ' ', e + 1, true)
      return s, (space or #q + 1) - 1
    end
    from = s + 1
  end
end
local function queue_has(q, id)
  return queue_find(q, id) ~= nil
end
local function queue_without(q, id)
  if not q then return '' end
  local s, e = queue_find(q, id)
  if not s then return q end
  if s == 1 then return string.sub(q, e + 2) end
  return string.sub(q, 1, s - 2) .. string.sub(q, e + 1)
end
-- Each queue helper that writes builds the new queue in one concatenation: every
-- string a script makes is hashed byte by byte, and the queue is ~40 bytes a client.
local function queue_push(q, id, span, mark, look)
  if not q or q == '' then
    if look then return id .. ':' .. span .. ':' .. mark .. ':' .. look end
    return id .. ':' .. span .. ':' .. mark
  end
  if look then return q .. ' ' .. id .. ':' .. span .. ':' .. mark .. ':' .. look end
  return q .. ' ' .. id .. ':' .. span .. ':' .. mark
end
-- An entry's id, span, mark and look (nil: not known). An entry without span or mark
-- (written by hand, or by another version) counts as 0 and '0'.
local function parse_entry(e)
  local id, span, mark, look = string.match(e, '^([^:]+):?(%d*):?([^:]*):?(%d*)$')
  if mark == '' then mark = '0' end
  return id, tonumber(span) or 0, mark, tonumber(look)
end
-- The queue with client `id`'s `look` set (nil: not known); nil when it is not queued.
local function queue_set_look(q, id, look)
  local s, e = queue_find(q, id)
  if not s then return nil end
  local _, span, mark = parse_entry(string.sub(q, s, e))
  if look then
    return string.sub(q, 1, s - 1) .. id .. ':' .. span .. ':' .. mark .. ':' .. look .. string.sub(q, e + 1)
  end
  return string.sub(q, 1, s - 1) .. id .. ':' .. span .. ':' .. mark .. string.sub(q, e + 1)
end
-- The server's clock in ms.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The first and last byte of the first entry of a queue that is not empty. Entries
-- are written one space apart; stray spaces (a queue written by hand) cost a pattern.
local function queue_head(q)
  local s = 1
  if string.byte(q, 1) == 32 then s = string.find(q, '%S') end
  local space = string.find(q, ' ', s, true)
  return s, (space or #q + 1) - 1
end
-- The first client's id, span, mark and look, without copying the rest of the queue.
local function queue_peek(q)
  local s, e = queue_head(q)
  local id, span, mark, look = parse_entry(string.sub(q, s, e))
  return id, span, mark, look
end
-- The first client's id, span and mark, the rest of the queue, and its look.
local function queue_pop(q)
  local s, e = queue_head(q)
  local rest = ''
  if string.byte(q, e + 2) and string.byte(q, e + 2) ~= 32 then
    rest = string.sub(q, e + 2)
  else
    local from = string.find(q, '%S', e + 1)
    if from then rest = string.sub(q, from) end
  end
  local id, span, mark, look = parse_entry(string.sub(q, s, e))
  return id, span, mark, rest, look
end
-- The first client id of a queue, or nil.
local function queue_first(q)
  return string.match(q or '', '^%s*([^:%s]+)')
end
-- A field that is absent or '' is unset.
local function unset(v)
  return not v or v == ''
end
-- A lock granted to a waiting client is that client's while PTTL > `gt`; the hash (and
-- so the queue) lives longer, as long as the releaser's lease would have, so that the
-- clients queued behind a grantee that never comes (crashed) still find it.
local function grant_over(key, gt)
  if unset(gt) then return false end
  return redis.call('PTTL', key) <= tonumber(gt)
end
