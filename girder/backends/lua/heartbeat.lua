-- heartbeat(node, ttl_ms, counters, low) -> {registered (1/0), clock, own, watched (1/0: the
-- grid's events are watched, see common.lua)}. The grid's clock rises
-- by one at every heartbeat: a node that sees it lower than before knows the server lost writes.
-- The other nodes' heartbeats may raise a restored clock past what a node saw last, so a node's
-- own heartbeats (those with counters; not its lease keeper's) also keep the clock they got in
-- its record: `own` is that of its previous one as the server still holds it (0 for none; -1
-- for a beat without counters or of a node not registered). Lower than the node got: lost writes.
-- `counters` (JSON, '' for none) replace the registered node's counters that `nodes` reports.
-- `low` is node's oldest call token still awaited (or its next one): a journal longer than
-- JOURNAL_TRIM_EVERY entries (left by a burst of calls sent at once, none of which could trim
-- it) loses those older than that.

local registered = 0
local own = -1
if call('ZSCORE', K_LEASES, node) then
  call('ZADD', K_LEASES, advance_grid_time() + tonumber(ttl_ms), node)
  registered = 1
  if counters ~= '' then
    own = tonumber(call('HGET', k_node(node), F_OWN_CLOCK)) or 0
  end
end
local journal = k_journal(node)
if call('HLEN', journal) > JOURNAL_TRIM_EVERY then
  trim_journal(journal, low)
end
local clock = call('INCR', K_CLOCK)
if own >= 0 then
  call('HSET', k_node(node), F_COUNTERS, counters, F_OWN_CLOCK, clock)
end
return {registered, clock, own, watched() and 1 or 0}
