-- Acquire: one round trip. The script is fence.lua, this file, queue.lua, then
-- acquire_held.lua: the common case, a free lock nobody queues for, returns here,
-- before the queue helpers are defined (each `local function` of a script is a new
-- closure at every call; see ARCHITECTURE "What an uncontended lock costs Redis").
-- KEYS[1] lock hash, KEYS[2] fence counter
-- ARGV[1] token, ARGV[2] lease ms, ARGV[3] fencing tokens to take ('0' = no fencing:
-- the caller's is the first, the rest are for handing the lock on inside its client),
-- ARGV[4] caller's client id, ARGV[5] '1' = the caller will wait (its client queues),
-- ARGV[6] the client's mark for this queueing (see queue.lua)
-- Returns {1, fence} when the caller holds the lock, {0, ms} when someone else does and
-- may keep it for ms more (-1: no expiry).
-- One HMGET reads everything; on a key of another type it raises WRONGTYPE and the
-- key is left untouched. (HMGET gives false for an absent field.)
-- The caller takes the lock: owner, client id, its fencing block, then `extra` fields.
local function take(extra)
  local fence = 0
  local fields = {'o', ARGV[1], 'c', ARGV[4]}
  local span = tonumber(ARGV[3])
  if span > 0 then
    fence = take_fence(KEYS[2], span)
    fields[#fields + 1] = 'f'; fields[#fields + 1] = integer_text(fence)
  end
  for i = 1, #extra do fields[#fields + 1] = extra[i] end
  redis.call('HSET', KEYS[1], unpack(fields))
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, fence}
end
local held = redis.call('HMGET', KEYS[1], 'o', 'c', 'f', 'q', 'w', 'gt')
local me = ARGV[4]
if not held[1] and not held[4] and not held[6] then
  -- No owner, no queue, no grant (no key at all, or one left with `w` alone): the
  -- caller takes it. acquire_held.lua does the same with a queue or a grant around.
  if held[5] then return take({'w', ''}) end
  return take({})
end
