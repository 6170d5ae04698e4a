-- Admit one request at every quota level that applies, atomically, in one round trip.
-- Time is in milliseconds from the Redis clock; money is in integer nano-USD (exact in Lua doubles
-- up to 2^53, i.e. nine million dollars per counter).
--
-- Per level i (6 keys, KEYS[6(i-1)+1 .. 6i]):
--   rpm   ZSET  request id -> admitted ms                 (sliding log: exact)
--   tpm   ZSET  request id -> admitted ms                 (sliding log of token reservations)
--   tpmv  HASH  request id -> tokens; "__sum" -> total in window
--   bud   HASH  "spent", "reserved" (nano-USD), "seeded" ("1" once rebuilt from Postgres)
--   inf   ZSET  request id -> reservation expiry ms      (open reservations = concurrency)
--   res   HASH  request id -> reserved nano-USD           (per budget period; released on settle or expiry)
-- ARGV: request_id, tokens, usd, reservation_ttl_ms, levels, then per level 9 values:
--   shadow (1|0), rpm, rpm_window_ms, tpm, tpm_window_ms, budget, budget_ttl_ms, max_concurrency, track (1|0)
--   (a limit of -1 means none; track = 1 when the level has a budget or a concurrency limit)
-- Returns {status, level, kind, now, retry_after_ms, shadow_kinds, stats...} with status 1 admitted,
-- 0 rejected (nothing changed), -1 the level's budget must be rebuilt from Postgres first.
-- stats per level: rpm_count, rpm_reset_ms, tpm_sum, tpm_reset_ms, spent, reserved, inflight.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = ARGV[1]
local tokens = tonumber(ARGV[2])
local usd = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local levels = tonumber(ARGV[5])

local function arg(i, j) return tonumber(ARGV[5 + 9 * (i - 1) + j]) end
local function key(i, j) return KEYS[6 * (i - 1) + j] end

-- Only ever lengthen a key's TTL (PTTL is -1 or -2 for a key without one or a missing key).
local function extend(k, ms)
  if redis.call('PTTL', k) < ms then redis.call('PEXPIRE', k, ms) end
end

local function oldest_reset(zkey, window)
  local oldest = redis.call('ZRANGE', zkey, 0, 0, 'WITHSCORES')
  if oldest[2] then return tonumber(oldest[2]) + window - now end
  return window
end

-- 1. Sweep: expired window entries and expired (leaked) reservations.
for i = 1, levels do
  if arg(i, 2) >= 0 then
    redis.call('ZREMRANGEBYSCORE', key(i, 1), '-inf', now - arg(i, 3))
  end
  if arg(i, 4) >= 0 then
    local old = redis.call('ZRANGEBYSCORE', key(i, 2), '-inf', now - arg(i, 5))
    for _, rid in ipairs(old) do
      local n = tonumber(redis.call('HGET', key(i, 3), rid) or '0')
      redis.call('HINCRBY', key(i, 3), '__sum', -n)
      redis.call('HDEL', key(i, 3), rid)
    end
    redis.call('ZREMRANGEBYSCORE', key(i, 2), '-inf', now - arg(i, 5))
  end
  if arg(i, 9) == 1 then
    local leaked = redis.call('ZRANGEBYSCORE', key(i, 5), '-inf', now)
    for _, rid in ipairs(leaked) do
      local r = tonumber(redis.call('HGET', key(i, 6), rid) or '0')
      if r > 0 then redis.call('HINCRBY', key(i, 4), 'reserved', -r) end
      redis.call('HDEL', key(i, 6), rid)
    end
    redis.call('ZREMRANGEBYSCORE', key(i, 5), '-inf', now)
  end
  if arg(i, 6) >= 0 and redis.call('HGET', key(i, 4), 'seeded') ~= '1' then
    return {-1, i, 'budget', now, 0, ''}
  end
end

-- 2. Check every level; an enforced failure rejects with nothing taken, a shadow one is only reported.
local shadow = {}
local stats = {}
for i = 1, levels do
  local rpm_count = (arg(i, 2) >= 0) and redis.call('ZCARD', key(i, 1)) or 0
  local tpm_sum = (arg(i, 4) >= 0) and tonumber(redis.call('HGET', key(i, 3), '__sum') or '0') or 0
  local spent = tonumber(redis.call('HGET', key(i, 4), 'spent') or '0')
  local reserved = tonumber(redis.call('HGET', key(i, 4), 'reserved') or '0')
  local inflight = (arg(i, 9) == 1) and redis.call('ZCARD', key(i, 5)) or 0
  local failed, retry = nil, 0
  if arg(i, 8) >= 0 and inflight + 1 > arg(i, 8) then
    failed, retry = 'concurrency', 1000
  elseif arg(i, 2) >= 0 and rpm_count + 1 > arg(i, 2) then
    failed, retry = 'rpm', oldest_reset(key(i, 1), arg(i, 3))
  elseif arg(i, 4) >= 0 and tpm_sum + tokens > arg(i, 4) then
    failed, retry = 'tpm', oldest_reset(key(i, 2), arg(i, 5))
  elseif arg(i, 6) >= 0 and spent + reserved + usd > arg(i, 6) then
    failed, retry = 'budget', arg(i, 7)
  end
  if failed then
    if arg(i, 1) == 1 then
      shadow[#shadow + 1] = failed
    else
      return {0, i, failed, now, retry, table.concat(shadow, ',')}
    end
  end
  stats[i] = {rpm_count, tpm_sum, spent, reserved, inflight}
end

-- 3. Take the reservation at every level.
local out = {1, 0, '', now, 0, table.concat(shadow, ',')}
for i = 1, levels do
  local s = stats[i]
  local rpm_reset, tpm_reset = 0, 0
  if arg(i, 2) >= 0 then
    redis.call('ZADD', key(i, 1), now, id)
    redis.call('PEXPIRE', key(i, 1), arg(i, 3))
    s[1] = s[1] + 1
    rpm_reset = oldest_reset(key(i, 1), arg(i, 3))
  end
  if arg(i, 4) >= 0 then
    redis.call('ZADD', key(i, 2), now, id)
    redis.call('HSET', key(i, 3), id, tokens)
    redis.call('HINCRBY', key(i, 3), '__sum', tokens)
    redis.call('PEXPIRE', key(i, 2), arg(i, 5))
    redis.call('PEXPIRE', key(i, 3), arg(i, 5))
    s[2] = s[2] + tokens
    tpm_reset = oldest_reset(key(i, 2), arg(i, 5))
  end
  if arg(i, 9) == 1 then
    -- `inf` and `res` must outlive every entry they hold, and with a budget also the `reserved` those
    -- entries add up to in `bud`: if they expired first, nothing would ever release that amount.
    local hold = 2 * ttl
    if arg(i, 6) >= 0 then hold = math.max(hold, arg(i, 7) + 86400000) end
    redis.call('ZADD', key(i, 5), now + ttl, id)
    extend(key(i, 5), hold)
    if arg(i, 6) >= 0 then
      redis.call('HSET', key(i, 6), id, usd)
      extend(key(i, 6), hold)
      redis.call('HINCRBY', key(i, 4), 'reserved', usd)
      s[4] = s[4] + usd
    end
    s[5] = s[5] + 1
  end
  if arg(i, 6) >= 0 then
    redis.call('PEXPIRE', key(i, 4), arg(i, 7) + 86400000)
  end
  local row = {s[1], rpm_reset, s[2], tpm_reset, s[3], s[4], s[5]}
  for _, v in ipairs(row) do out[#out + 1] = v end
end
return out
