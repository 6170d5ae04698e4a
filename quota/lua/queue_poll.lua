-- A waiter asks where it stands: claims its slot when granted (the short claim window becomes the full
-- lease), else refreshes its entry's expiry; an entry swept while its waiter was stalled is added again.
-- ARGV[4..]: member, tenant, inc, tier, lease_ms, wait_ttl_ms (as for queue_enqueue.lua)
-- Returns {status, depth}: status 1 granted, 0 waiting.
local member, tenant = ARGV[4], ARGV[5]
local inc, tier, lease_ms, wait_ttl_ms = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])

sweep()
dispatch()
local status
if redis.call('ZSCORE', K_INF, member) then
  redis.call('ZADD', K_INF, 'XX', now + lease_ms, member)
  status = 1
elseif redis.call('ZSCORE', K_WEXP, member) then
  redis.call('ZADD', K_WEXP, 'XX', now + wait_ttl_ms, member)
  status = 0
else
  status = admit(member, tenant, inc, tier, lease_ms, wait_ttl_ms)
end
return {status, redis.call('ZCARD', K_WAIT)}
