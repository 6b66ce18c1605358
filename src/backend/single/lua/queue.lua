-- Shared by the scripts below (prepended to each): the queue of waiting clients, field
-- `q`, a space-separated list of client ids in the order they started waiting.
local function queue_has(q, id)
  if not q then return false end
  for c in string.gmatch(q, '%S+') do
    if c == id then return true end
  end
  return false
end
local function queue_without(q, id)
  if not q then return '' end
  local out = {}
  for c in string.gmatch(q, '%S+') do
    if c ~= id then out[#out + 1] = c end
  end
  return table.concat(out, ' ')
end
local function queue_push(q, id)
  if not q or q == '' then return id end
  return q .. ' ' .. id
end
-- The first client id and the rest of the queue.
local function queue_pop(q)
  return string.match(q, '^(%S+)%s*(.*)$')
end
-- `o` (owner) and `g` (reserved for) are absent or '' when unset.
local function unset(v)
  return not v or v == ''
end
