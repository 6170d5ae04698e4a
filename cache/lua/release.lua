-- Release a fill lock only if this leader still holds it: after its lease expired another process may own it.
-- KEYS[1] the lock, ARGV[1] the token the leader set.
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
