-- nodes() -> {{node, kind, distributor or nil, alive (1/0), work, running, counters}, ...}
-- (`counters`: JSON from the node's last heartbeat, or ''). A node whose membership record is
-- missing (evicted, or garbage) is reported with kind nil.

local _, now = grid_time()
local leases = call('ZRANGE', K_LEASES, 0, -1, 'WITHSCORES')
local found = {}
for i = 1, #leases, 2 do
  local node = leases[i]
  local info = call('HMGET', k_node(node), F_KIND, F_DISTRIBUTOR, F_COUNTERS)
  local alive = 0
  if tonumber(leases[i + 1]) >= now then
    alive = 1
  end
  found[#found + 1] = {
    node, info[1], info[2], alive, call('LLEN', k_work(node)), call('SCARD', k_running(node)),
    info[3] or '',
  }
end
return found
