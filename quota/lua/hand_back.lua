-- Back from an outage: add what this process held in Postgres meanwhile to the budget counters that
-- outlived it (rebuilt no later than the first hold was taken; one rebuilt since read those holds from
-- Postgres itself; a rebuild in the same millisecond counts them, erring towards refusing, never overspending).
-- KEYS: per counter b: counter, its `held` hash. ARGV: first_hold_ms, then per counter: n, then n triples
-- (request_id, nano-USD, marker key). Each amount is remembered in `held`, so that reconcile.lua charges
-- only the rest of the real cost when the usage record lands; a record that has landed (marker `x`) was
-- charged in full by reconcile.lua already.
local began = tonumber(ARGV[1])
local a = 2
for b = 1, #KEYS / 2 do
  local counter, held = KEYS[2 * b - 1], KEYS[2 * b]
  local n = tonumber(ARGV[a])
  a = a + 1
  local state = redis.call('HMGET', counter, 'seeded', 'seeded_at')
  local outlived = state[1] == '1' and tonumber(state[2] or '0') <= began
  for _ = 1, n do
    local rid, amount, marker = ARGV[a], ARGV[a + 1], ARGV[a + 2]
    a = a + 3
    if outlived and redis.call('HEXISTS', marker, 'x') == 0 then
      redis.call('HINCRBY', counter, 'spent', amount)
      redis.call('HSET', held, rid, amount)
      redis.call('PEXPIRE', held, math.max(redis.call('PTTL', counter), 1000))
    end
  end
end
return 0
