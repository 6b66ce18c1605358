-- Shared by the scripts below (prepended to each).
-- The queue of waiting clients, field `q`: space-separated entries
-- `<client id>:<span>:<mark>`, oldest first. `span` is the number of fencing tokens a
-- grant to that client takes (0 without fencing); `mark` is the client's name for the
-- request that queued it, echoed in the grant so that the client can tell a grant of
-- this queueing from a late one of an earlier queueing.
local function entry_id(e)
  return string.match(e, '^([^:]+)')
end
local function queue_has(q, id)
  if not q then return false end
  for e in string.gmatch(q, '%S+') do
    if entry_id(e) == id then return true end
  end
  return false
end
local function queue_without(q, id)
  if not q then return '' end
  local out = {}
  for e in string.gmatch(q, '%S+') do
    if entry_id(e) ~= id then out[#out + 1] = e end
  end
  return table.concat(out, ' ')
end
local function queue_push(q, id, span, mark)
  local e = id .. ':' .. span .. ':' .. mark
  if not q or q == '' then return e end
  return q .. ' ' .. e
end
-- The first client's id, span and mark, and the rest of the queue. An entry without
-- span or mark (written by hand, or by another version) counts as 0 and '0'.
local function queue_pop(q)
  local e, rest = string.match(q, '^(%S+)%s*(.*)$')
  local id, span, mark = string.match(e, '^([^:]+):?(%d*):?(%S*)$')
  if mark == '' then mark = '0' end
  return id, tonumber(span) or 0, mark, rest
end
-- The first client id of a queue, or nil.
local function queue_first(q)
  return string.match(q or '', '^([^:%s]+)')
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
