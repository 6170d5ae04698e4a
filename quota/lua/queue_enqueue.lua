-- Enqueue one request, granting it in this same round trip when a slot is free and nobody waits.
-- ARGV[4..]: member, tenant, inc (milli-tokens per weight), tier (0 = highest priority), lease_ms,
--   wait_ttl_ms, max_queued (-1: no cap), key_ttl_ms
-- Returns {status, depth, tenant_waiting}: status 1 granted, 0 waiting, 2 the tenant's queue is full.
local member, tenant = ARGV[4], ARGV[5]
local inc, tier, lease_ms, wait_ttl_ms = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local max_queued, key_ttl_ms = tonumber(ARGV[10]), tonumber(ARGV[11])

sweep()
dispatch()
local waiting = tonumber(redis.call('HGET', K_QLEN, tenant) or '0')
if max_queued >= 0 and waiting >= max_queued and redis.call('ZCARD', K_INF) >= capacity then
  return {2, redis.call('ZCARD', K_WAIT), waiting}
end
local status = admit(member, tenant, inc, tier, lease_ms, wait_ttl_ms)
-- A deployment nobody calls any more leaves nothing behind; a live one is touched on every request.
for i = 1, 7 do redis.call('PEXPIRE', KEYS[i], key_ttl_ms) end
return {status, redis.call('ZCARD', K_WAIT), waiting + 1 - status}
