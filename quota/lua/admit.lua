-- Admit one request against every sliding-log limit that applies to it, atomically.
-- Time is in milliseconds, read from the Redis clock so every gateway process shares one clock.
--
-- KEYS[i]       sorted set of admitted request ids scored by admission time, one per limit
-- ARGV[1]       request id (the set member)
-- ARGV[2i]      limit i (max members inside the window)
-- ARGV[2i+1]    window i in milliseconds
--
-- Returns {admitted (1|0), failed_index (0 if admitted), now_ms, count_1, reset_ms_1, count_2, reset_ms_2, ...}
-- where count_i is the number of admitted requests in window i after this decision and reset_ms_i
-- the time until the oldest of them leaves the window. A rejection changes no key.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #KEYS
local counts = {}
local failed = 0
for i = 1, n do
  local limit = tonumber(ARGV[2 * i])
  local window = tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  counts[i] = redis.call('ZCARD', KEYS[i])
  if failed == 0 and counts[i] >= limit then
    failed = i
  end
end
local out = {failed == 0 and 1 or 0, failed, now}
for i = 1, n do
  local window = tonumber(ARGV[2 * i + 1])
  if failed == 0 then
    redis.call('ZADD', KEYS[i], now, ARGV[1])
    redis.call('PEXPIRE', KEYS[i], window)
    counts[i] = counts[i] + 1
  end
  local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
  local reset = window
  if oldest[2] then
    reset = tonumber(oldest[2]) + window - now
  end
  out[#out + 1] = counts[i]
  out[#out + 1] = reset
end
return out
