-- heartbeat(node, ttl_ms, counters, low) -> {registered (1/0), clock}. The grid's clock rises by
-- one at every heartbeat: a node that sees it lower than before knows the server lost writes.
-- `counters` (JSON, '' for none) replace the registered node's counters that `nodes` reports.
-- `low` is node's oldest call token still awaited (or its next one): a journal longer than
-- JOURNAL_TRIM_EVERY entries (left by a burst of calls sent at once, none of which could trim
-- it) loses those older than that.

local registered = 0
if call('ZSCORE', K_LEASES, node) then
  call('ZADD', K_LEASES, advance_grid_time() + tonumber(ttl_ms), node)
  registered = 1
  if counters ~= '' then
    call('HSET', k_node(node), F_COUNTERS, counters)
  end
end
local journal = k_journal(node)
if call('HLEN', journal) > JOURNAL_TRIM_EVERY then
  trim_journal(journal, low)
end
return {registered, call('INCR', K_CLOCK)}
