-- Replace a request's reservation by what it really used, at every level, exactly once.
-- Same per-level keys as reserve.lua, then KEYS[#KEYS] = the request's marker hash: `s` once settled,
-- `e<b>` = the epoch of the b-th budget counter this settlement charged (and `x` once its usage record
-- has landed in the ledger: reconcile.lua).
-- ARGV: request_id, actual_tokens, actual_usd (nano), levels, marker_ttl_ms, admitted_at_ms,
--       then per level: budget_tracked (1|0)
-- Returns 1 when applied, 0 when this request was already settled.
local marker = KEYS[#KEYS]
if redis.call('HSETNX', marker, 's', '1') == 0 then
  return 0
end
redis.call('PEXPIRE', marker, tonumber(ARGV[5]))
local id = ARGV[1]
local tokens = tonumber(ARGV[2])
local usd = ARGV[3]
local levels = tonumber(ARGV[4])
local admitted_at = tonumber(ARGV[6])
local function key(i, j) return KEYS[6 * (i - 1) + j] end
local b = 0
for i = 1, levels do
  -- Release the open reservation (if the sweep has not already released it as leaked).
  local found = redis.call('ZREM', key(i, 5), id) == 1
  if found then
    local r = tonumber(redis.call('HGET', key(i, 6), id) or '0')
    if r > 0 then redis.call('HINCRBY', key(i, 4), 'reserved', -r) end
  end
  redis.call('HDEL', key(i, 6), id)
  if tonumber(ARGV[6 + i]) == 1 then
    b = b + 1
    local state = redis.call('HMGET', key(i, 4), 'seeded', 'seeded_at', 'epoch')
    if state[1] == '1' then
      -- Charge the counter that admitted the request: the one holding its reservation, or, once the sweep
      -- has released a reservation older than its TTL, one rebuilt before the admission. A request admitted
      -- by a counter Redis has since lost is counted by the rebuilt one when its usage record lands: by the
      -- rebuild's ledger read, or by reconcile.lua (the same rule decides there that it is not charged here).
      if found or admitted_at >= tonumber(state[2] or '0') then
        redis.call('HINCRBY', key(i, 4), 'spent', usd)
        redis.call('HSET', marker, 'e' .. b, state[3] or '-')
      end
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
