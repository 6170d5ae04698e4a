-- Second half of rebuilding a level's budget counter from Postgres (see seed_begin.lua).
-- KEYS: budget hash, its `late` hash (records that landed during the rebuild), its `held` hash (request
-- id -> nano-USD counted for a Postgres budget hold whose usage record had not landed yet).
-- ARGV: token, spent (nano-USD: ledger + open holds, read in one snapshot), ttl_ms, epoch, snapshot,
--       then pairs (request_id, nano-USD) of the open holds included in `spent`.
-- Returns 1 when rebuilt, 0 when another process rebuilt it first, -1 when Redis lost the counter again
-- since seed_begin (the late landings are gone with it: read the ledger again).
if redis.call('HGET', KEYS[1], 'seeded') == '1' then
  return 0
end
if redis.call('HGET', KEYS[1], 'seeding') ~= ARGV[1] then
  return -1
end
local spent = tonumber(ARGV[2])
local snap = ARGV[5]
local ttl = tonumber(ARGV[3])
local held = {}
for i = 6, #ARGV, 2 do
  held[ARGV[i]] = tonumber(ARGV[i + 1])
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
end
-- Records that landed after seed_begin: counted unless the snapshot already has them (they were admitted
-- before this rebuild, so no settlement charges them to it).
local late = redis.call('HGETALL', KEYS[2])
for i = 1, #late, 2 do
  local rid = late[i]
  local xid, cost, via_redis = string.match(late[i + 1], '^(%d+):(%d+):(%d)$')
  if xid and not visible_in(snap, xid) then
    spent = spent + tonumber(cost) - (held[rid] or 0)
    held[rid] = nil
    redis.call('HDEL', KEYS[3], rid)
  end
end
redis.call('DEL', KEYS[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- `seeded_at` tells settle.lua which requests this counter admitted itself; `epoch` names this rebuild,
-- `snap` what its sum saw (see settle.lua and reconcile.lua).
redis.call('HSET', KEYS[1], 'spent', int(spent), 'seeded', '1', 'seeded_at', now, 'epoch', ARGV[4], 'snap', snap)
redis.call('HDEL', KEYS[1], 'seeding')
redis.call('HSETNX', KEYS[1], 'reserved', 0)
redis.call('PEXPIRE', KEYS[1], ttl)
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('PEXPIRE', KEYS[3], ttl)
end
return 1
