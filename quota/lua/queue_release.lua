-- Leave the queue in whatever state the member is in: release its slot, or remove its waiting entry
-- (give-up), or nothing when the sweep already did; then hand freed slots to the heads.
-- ARGV[4]: member. Returns the number of requests still waiting.
local member = ARGV[4]
redis.call('ZREM', K_INF, member)
give_up(member)
sweep()
dispatch()
return redis.call('ZCARD', K_WAIT)
