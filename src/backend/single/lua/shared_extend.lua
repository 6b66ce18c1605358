-- Extend the lease of a reader, the writer or a permit, only while it still holds.
-- KEYS[1] holders, KEYS[2] state (see shared.lua); ARGV[1] token, ARGV[2] lease ms.
-- Returns 1 extended, 0 the token holds nothing (its lease ran out).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
local ends = string.format('%.0f', now + lease)
local w = redis.call('HMGET', KEYS[2], 'wo', 'we')
if w[1] == ARGV[1] and tonumber(w[2] or '0') > now then
  redis.call('HSET', KEYS[2], 'we', ends)
else
  local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if not score or tonumber(score) <= now then return 0 end
  redis.call('ZADD', KEYS[1], 'XX', ends, ARGV[1])
end
-- Both keys live at least as long as this lease.
for _, k in ipairs(KEYS) do
  local pttl = redis.call('PTTL', k)
  if pttl >= 0 and pttl < lease then redis.call('PEXPIRE', k, ARGV[2]) end
end
return 1
