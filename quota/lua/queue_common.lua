-- The fair queue's shared part: queue_enqueue.lua, queue_poll.lua and queue_release.lua are each appended
-- to this file and registered as one script, so every operation is one atomic round trip.
-- Time is in milliseconds from the Redis clock. Virtual time V, start tags S and finish tags F are integers
-- in milli-tokens per unit of weight, always written with %d: Lua's tostring keeps only 14 digits.
--
-- KEYS (one deployment, all in its {d:<deployment>} hash slot):
--   wait   ZSET  order -> 0, order = tier(3) F(20) seq(15) ':' member; equal scores sort by member bytes,
--                so ZRANGE 0 0 is the head: highest priority tier first, then smallest F, then arrival
--   wexp   ZSET  member -> ms the waiting entry expires (deadline passed, or its waiter stopped refreshing)
--   meta   HASH  member -> "order \t S \t F \t tenant" (tenant last: it may contain anything)
--   qlen   HASH  tenant -> entries waiting
--   inf    ZSET  member -> ms the slot expires (lease; only claim_ms until its waiter has claimed it)
--   clock  HASH  "v" -> V, "seq" -> arrival counter
--   flast  HASH  tenant -> F of the tenant's latest request
-- ARGV: channel, capacity, claim_ms, then the operation's own from ARGV[4].
local K_WAIT, K_WEXP, K_META, K_QLEN, K_INF, K_CLOCK, K_FLAST = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local channel = ARGV[1]
local capacity = tonumber(ARGV[2])
local claim_ms = tonumber(ARGV[3])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function int(x) return string.format('%d', x) end

-- Remove a waiting entry; returns its S, F and tenant, or nil when it is not waiting.
local function unqueue(member)
  local m = redis.call('HGET', K_META, member)
  if not m then return nil end
  local order, s, f, tenant = string.match(m, '^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$')
  redis.call('ZREM', K_WAIT, order)
  redis.call('ZREM', K_WEXP, member)
  redis.call('HDEL', K_META, member)
  if redis.call('HINCRBY', K_QLEN, tenant, -1) <= 0 then redis.call('HDEL', K_QLEN, tenant) end
  return tonumber(s), tonumber(f), tenant
end

-- A waiter gave up (deadline, cancellation, death): it was never served, so when it was its tenant's
-- latest request the tenant's next one starts where this one started instead of after it.
local function give_up(member)
  local s, f, tenant = unqueue(member)
  if s and tonumber(redis.call('HGET', K_FLAST, tenant) or '-1') == f then
    redis.call('HSET', K_FLAST, tenant, int(s))
  end
end

-- Free the slots of dead holders and drop the entries of waiters that left without saying so.
local function sweep()
  redis.call('ZREMRANGEBYSCORE', K_INF, '-inf', now)
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', K_WEXP, '-inf', now)) do give_up(member) end
  if redis.call('ZCARD', K_WAIT) == 0 and redis.call('ZCARD', K_INF) == 0 then
    -- Idle: no tag is in use, so the virtual clock restarts at 0 and never nears 2^53.
    redis.call('HDEL', K_CLOCK, 'v')
    redis.call('DEL', K_FLAST)
  end
end

local function advance(s)
  if s > tonumber(redis.call('HGET', K_CLOCK, 'v') or '0') then redis.call('HSET', K_CLOCK, 'v', int(s)) end
end

-- Grant heads while capacity is free, on behalf of their waiters, and wake every process once.
-- Invariant after every script: nobody waits while a slot is free.
local function dispatch()
  local granted = {}
  local inflight = redis.call('ZCARD', K_INF)
  while inflight < capacity do
    local head = redis.call('ZRANGE', K_WAIT, 0, 0)[1]
    if not head then break end
    local member = string.match(head, '^%d+:(.*)$')
    local s = unqueue(member)
    if s then
      advance(s)
      redis.call('ZADD', K_INF, now + claim_ms, member)
      granted[#granted + 1] = member
      inflight = inflight + 1
    else
      redis.call('ZREM', K_WAIT, head)  -- an order without meta: never block the head on it
    end
  end
  if #granted > 0 then redis.call('PUBLISH', channel, table.concat(granted, ' ')) end
end

-- Tag a request (S = max(V, F_last[tenant]), F = S + inc) and grant it at once when a slot is free
-- (after dispatch nobody waits then); otherwise add it to the waiting set. Returns 1 granted, 0 waiting.
local function admit(member, tenant, inc, tier, lease_ms, wait_ttl_ms)
  local v = tonumber(redis.call('HGET', K_CLOCK, 'v') or '0')
  local s = math.max(v, tonumber(redis.call('HGET', K_FLAST, tenant) or '0'))
  local f = s + inc
  redis.call('HSET', K_FLAST, tenant, int(f))
  if redis.call('ZCARD', K_INF) < capacity then
    advance(s)
    redis.call('ZADD', K_INF, now + lease_ms, member)
    return 1
  end
  local seq = redis.call('HINCRBY', K_CLOCK, 'seq', 1)
  local order = string.format('%03d%020d%015d:%s', tier, f, seq, member)
  redis.call('ZADD', K_WAIT, 0, order)
  redis.call('ZADD', K_WEXP, now + wait_ttl_ms, member)
  redis.call('HSET', K_META, member, order .. '\t' .. int(s) .. '\t' .. int(f) .. '\t' .. tenant)
  redis.call('HINCRBY', K_QLEN, tenant, 1)
  return 0
end
