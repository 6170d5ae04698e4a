-- Store one entry of a tenant's bounded set and keep the set within its bound, atomically.
-- KEYS[1] the entry, KEYS[2] the tenant's index (sorted set: member = entry key suffix, score = expiry in µs).
-- ARGV[1] value, ARGV[2] TTL in milliseconds, ARGV[3] max entries of this tenant, ARGV[4] index member.
-- An entry is named `<index>:<member>` (cache/keys.py `KeySpace`); evicted entries are named that way, not
-- declared in KEYS: they share KEYS[2]'s `{t:…}` hash slot, so this stays one atomic script on a Cluster.
-- Time is Redis's own (TIME), in microseconds, so every process orders entries on one clock.
local ttl_ms = tonumber(ARGV[2])
local max_entries = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now_us = tonumber(clock[1]) * 1000000 + tonumber(clock[2])

redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl_ms)
-- %.0f: a plain integer string; tostring() would print 1.7e+15 and lose the order of close entries.
redis.call('ZADD', KEYS[2], string.format('%.0f', now_us + ttl_ms * 1000), ARGV[4])

-- Members whose entries Redis has already expired (PX) only need to leave the index.
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('%.0f', now_us))

-- Over the bound: drop the entries closest to expiry (the oldest, when the tenant's TTLs agree).
local evicted = 0
local excess = redis.call('ZCARD', KEYS[2]) - max_entries
if excess > 0 then
    local oldest = redis.call('ZRANGE', KEYS[2], 0, excess - 1)
    for _, member in ipairs(oldest) do
        redis.call('DEL', KEYS[2] .. ':' .. member)
    end
    redis.call('ZREMRANGEBYRANK', KEYS[2], 0, excess - 1)
    evicted = #oldest
end

-- The index lives as long as its longest-lived entry, so an idle tenant leaves nothing behind.
if redis.call('PTTL', KEYS[2]) < ttl_ms then
    redis.call('PEXPIRE', KEYS[2], ttl_ms)
end
return evicted
