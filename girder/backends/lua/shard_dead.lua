-- shard_dead(reaper) -> {node1, {running keys of node1}, node2, ...}: the first step of a reap in
-- the sharded layout, which changes nothing: the nodes whose lease ran out, each with what its
-- running set names (the caller's records' steps requeue those keys before `shard_reap` forgets
-- the nodes). Nobody when the reaper's own lease ran out, or it is not registered (see base.py).

local _, grid = grid_time()
if not is_live(reaper, grid) then
  return {}
end
local found = {}
local dead = call('ZRANGEBYSCORE', K_LEASES, '-inf', '(' .. grid)
table.sort(dead)
for _, node in ipairs(dead) do
  local running = call('SMEMBERS', k_running(node))
  table.sort(running)
  found[#found + 1] = node
  found[#found + 1] = running
end
return found
