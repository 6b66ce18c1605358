-- Fencing on Redlock: once an acquisition has its votes, the counters of the masters
-- that gave them are raised to the top of its block (the maximum over them), so that
-- any later majority, which shares a master with this one, takes tokens above it.
-- KEYS[1] fence counter; ARGV[1] the block's top
-- Returns 1 (the counter is at least the top now).
local counter = tonumber(redis.call('GET', KEYS[1]) or '0')
local top = tonumber(ARGV[1])
if not counter or counter < top then
  redis.call('SET', KEYS[1], integer_text(top))
end
return 1
