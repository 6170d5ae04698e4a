-- Keep a live request's reservation from being swept as leaked: a stream may run longer than the TTL.
-- KEYS: per level, its `inf` sorted set then its `res` hash (tracked levels only).
-- ARGV: request_id, ttl_ms. Only entries still there are moved (XX): a settled request is not revived.
-- Returns how many levels still held the request.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local held = 0
for i = 1, #KEYS, 2 do
  if redis.call('ZSCORE', KEYS[i], ARGV[1]) then
    redis.call('ZADD', KEYS[i], 'XX', now + ttl, ARGV[1])
    held = held + 1
    for _, k in ipairs({KEYS[i], KEYS[i + 1]}) do
      if redis.call('PTTL', k) > 0 and redis.call('PTTL', k) < 2 * ttl then redis.call('PEXPIRE', k, 2 * ttl) end
    end
  end
end
return held
