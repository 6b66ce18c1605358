-- Read a read-write lock or semaphore without writing.
-- KEYS[1] holders, KEYS[2] state (see shared.lua); ARGV[1] a token ('' for none)
-- Returns {holds, holders, n, queued}: whether ARGV[1] holds it now (1/0), the live
-- readers or permits, the permit count in use (0: none stored), whether anyone waits.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local f = redis.call('HMGET', KEYS[2], 'n', 'wo', 'we', 'q')
local live = redis.call('ZCOUNT', KEYS[1], '(' .. string.format('%.0f', now), '+inf')
local holds = 0
if ARGV[1] ~= '' then
  if f[2] == ARGV[1] and tonumber(f[3] or '0') > now then holds = 1 end
  local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if score and tonumber(score) > now then holds = 1 end
end
local queued = 0
if f[4] and f[4] ~= '' then queued = 1 end
return {holds, live, tonumber(f[1] or '') or 0, queued}
