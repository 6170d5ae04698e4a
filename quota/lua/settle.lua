-- Replace a request's reservation by what it really used, at every level, exactly once.
-- Same per-level keys as reserve.lua, then KEYS[#KEYS] = the request's settled marker.
-- ARGV: request_id, actual_tokens, actual_usd (nano), levels, marker_ttl_ms, admitted_at_ms,
--       then per level: budget_tracked (1|0)
-- Returns 1 when applied, 0 when this request was already settled.
if not redis.call('SET', KEYS[#KEYS], '1', 'NX', 'PX', tonumber(ARGV[5])) then
  return 0
end
local id = ARGV[1]
local tokens = tonumber(ARGV[2])
local usd = tonumber(ARGV[3])
local levels = tonumber(ARGV[4])
local admitted_at = tonumber(ARGV[6])
local function key(i, j) return KEYS[6 * (i - 1) + j] end
for i = 1, levels do
  -- Release the open reservation (if the sweep has not already released it as leaked).
  local found = redis.call('ZREM', key(i, 5), id) == 1
  if found then
    local r = tonumber(redis.call('HGET', key(i, 6), id) or '0')
    if r > 0 then redis.call('HINCRBY', key(i, 4), 'reserved', -r) end
  end
  redis.call('HDEL', key(i, 6), id)
  -- Charge the real spend to the counter that admitted the request: the one holding its reservation, or,
  -- once the sweep has released a reservation older than its TTL, one seeded before the admission. A
  -- request admitted by a counter Redis has since lost is in the ledger the new counter was rebuilt from
  -- (or will be: an unseeded counter is rebuilt before its next admission), so charging it again here
  -- would count it twice. (Admitted in the very millisecond of the rebuild, it is charged: counted twice
  -- at worst, the safe side for a budget.)
  if tonumber(ARGV[6 + i]) == 1 and redis.call('HGET', key(i, 4), 'seeded') == '1' then
    local seeded_at = tonumber(redis.call('HGET', key(i, 4), 'seeded_at') or '0')
    if found or admitted_at >= seeded_at then
      redis.call('HINCRBY', key(i, 4), 'spent', usd)
    end
  end
  -- Tokens: the window keeps the request, now at its real size.
  local old = redis.call('HGET', key(i, 3), id)
  if old then
    redis.call('HSET', key(i, 3), id, tokens)
    redis.call('HINCRBY', key(i, 3), '__sum', tokens - tonumber(old))
  end
end
return 1
