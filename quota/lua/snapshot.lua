-- Prelude of the scripts that reconcile Redis budget counters with the Postgres ledger.
-- A counter rebuilt from the ledger keeps the Postgres snapshot its sum was read in (`snap`, pg_snapshot
-- text "xmin:xmax:xip,…"); a usage record committed by transaction `xid` (xid8) is in that sum exactly
-- when the snapshot sees the transaction: pg_visible_in_snapshot, for a transaction known to have committed.
local function visible_in(snap, xid)
  if not snap or not xid then return false end
  local xmin, xmax, xip = string.match(snap, '^(%d+):(%d+):(.*)$')
  if not xmin then return false end
  local x = tonumber(xid)
  if x < tonumber(xmin) then return true end
  if x >= tonumber(xmax) then return false end
  for v in string.gmatch(xip, '%d+') do
    if tonumber(v) == x then return false end
  end
  return true
end

-- Integer nano-USD as Redis wants it: Lua's tostring() turns 1e14 and above into exponent notation.
local function int(v) return string.format('%.0f', v) end
