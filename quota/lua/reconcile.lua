-- A usage record has landed in the Postgres ledger: make sure each budget counter it belongs to counts
-- it exactly once. A counter counts a record through its rebuild snapshot (`snap`), through settle.lua
-- (marker field `e<b>` = the counter's epoch), or here; this script adds it when neither did.
-- KEYS[1] = the request's marker hash (see settle.lua); then per budget counter b: counter, late, held.
-- ARGV: request_id, xid (xid8 of the ledger transaction), cost (nano-USD), via_redis (1: its settlement
--       goes to Redis; 0: admitted by the fallback, settled in Postgres), marker_ttl_ms, admitted_at_ms.
-- Returns 1 when applied, 0 when this landing was reconciled before (a retry after a lost reply).
local marker = KEYS[1]
local rid, xid, cost, via_redis = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
if redis.call('HSETNX', marker, 'x', xid) == 0 then
  return 0
end
if redis.call('PTTL', marker) < 0 then
  redis.call('PEXPIRE', marker, tonumber(ARGV[5]))
end
local admitted_at = tonumber(ARGV[6])
for b = 1, (#KEYS - 1) / 3 do
  local counter, late, held = KEYS[3 * b - 1], KEYS[3 * b], KEYS[3 * b + 1]
  local state = redis.call('HMGET', counter, 'seeded', 'epoch', 'snap', 'seeded_at')
  if state[1] == '1' then
    if not visible_in(state[3], xid) then
      if via_redis == '0' then
        -- Settled in Postgres: charge what a rebuild or the hand-back did not already count of it.
        local counted = tonumber(redis.call('HGET', held, rid) or '0')
        redis.call('HDEL', held, rid)
        redis.call('HINCRBY', counter, 'spent', int(cost - counted))
      elseif redis.call('HGET', marker, 'e' .. b) ~= (state[2] or '-')
          and admitted_at < tonumber(state[4] or '0') then
        -- Neither settled into this counter nor ever to be: admitted before it was rebuilt (by a counter
        -- since lost, with its marks), so settle.lua leaves it alone, whether it ran already or not.
        redis.call('HINCRBY', counter, 'spent', int(cost))
      end
    end
  elseif redis.call('EXISTS', counter) == 1 then
    -- Being rebuilt (seed_begin.lua ran, seed.lua not yet): seed.lua judges it against its snapshot.
    redis.call('HSET', late, rid, xid .. ':' .. int(cost) .. ':' .. via_redis)
    redis.call('PEXPIRE', late, 600000)
  end
  -- No counter at all: the next rebuild reads the ledger after this landing, so it counts the record.
end
return 1
