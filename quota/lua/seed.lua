-- Rebuild a level's budget counter from Postgres after Redis lost it (restart without persistence).
-- KEYS[1] = the level's budget hash; ARGV: spent (nano-USD from the ledger), ttl_ms.
-- Only the first rebuild counts: a concurrent one from another process finds `seeded` and changes nothing.
if redis.call('HGET', KEYS[1], 'seeded') == '1' then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- `seeded_at` tells settle.lua which requests this counter admitted itself (see there).
redis.call('HSET', KEYS[1], 'spent', ARGV[1], 'seeded', '1', 'seeded_at', now)
redis.call('HSETNX', KEYS[1], 'reserved', 0)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
