-- First half of rebuilding a level's budget counter from Postgres (after Redis lost it).
-- KEYS[1] = the level's budget hash; ARGV: token, marker_ttl_ms.
-- Marks the counter as being rebuilt *before* the ledger is read, so that a usage record landing from
-- now on is reported to the counter (reconcile.lua keeps it in the `late` hash for seed.lua to judge).
-- Returns the rebuild's token (one shared by concurrent rebuilders), or '' when already rebuilt.
if redis.call('HGET', KEYS[1], 'seeded') == '1' then
  return ''
end
redis.call('HSETNX', KEYS[1], 'seeding', ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))  -- a rebuilder that dies leaves no marker behind for long
end
return redis.call('HGET', KEYS[1], 'seeding')
