-- heartbeat(node, ttl_ms, counters) -> {registered (1/0), clock}. The grid's clock rises by one
-- at every heartbeat: a node that sees it lower than before knows the server lost writes.
-- `counters` (JSON, '' for none) replace the registered node's counters that `nodes` reports.

local registered = 0
if call('ZSCORE', K_LEASES, node) then
  call('ZADD', K_LEASES, advance_grid_time() + tonumber(ttl_ms), node)
  registered = 1
  if counters ~= '' then
    call('HSET', k_node(node), F_COUNTERS, counters)
  end
end
return {registered, call('INCR', K_CLOCK)}
