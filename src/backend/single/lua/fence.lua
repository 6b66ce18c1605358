-- Shared by the scripts that take fencing tokens (prepended to each).
-- The one rule: counter = max(counter, server clock in µs) + span. A counter that was
-- lost (evicted, forgotten by a restart without persistence) or is stale (an older
-- copy after a failover) then starts again above every token handed out before, as
-- long as the server's clock moves forward and tokens are taken slower than one per µs
-- on average (so that the counter never runs ahead of the clock).
-- Lua numbers are doubles: integers are exact below 2^53, which µs since 1970 reach
-- in the year 2255. Past that a token could repeat, so the script refuses instead.
local FENCE_LIMIT = 9007199254740992

-- Plain digits: Redis turns a Lua number given to redis.call into text in a format
-- that is not ours to choose (large round numbers may come out as `8e+15`).
local function integer_text(n)
  return string.format('%.0f', n)
end

-- Takes `span` consecutive tokens from the counter at `key`; returns the first.
-- Raises before writing anything when the counter is not an integer, or when the
-- tokens would not be exact.
local function take_fence(key, span)
  local time = redis.call('TIME')
  local clock = tonumber(time[1]) * 1000000 + tonumber(time[2])
  local stored = redis.call('GET', key)
  local counter = tonumber(stored or '0')
  -- `counter ~= counter` is NaN.
  if not counter or counter ~= counter or counter ~= math.floor(counter) then
    error({err = 'ERR value is not an integer: the fence counter ' .. key .. ' holds ' .. stored})
  end
  local top = math.max(counter, clock) + span
  if top >= FENCE_LIMIT then
    error({err = 'ERR the fence counter ' .. key .. ' (' .. (stored or 'absent') .. ') would pass 2^53, '
      .. 'the largest integer a Lua script counts exactly: no exact fencing token is left'})
  end
  redis.call('SET', key, integer_text(top))
  return top - span + 1
end
