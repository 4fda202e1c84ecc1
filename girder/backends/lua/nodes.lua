-- nodes() -> {{node, kind, distributor or nil, alive (1/0), work, running}, ...}

local now = now_ms()
local leases = redis.call('ZRANGE', K_LEASES, 0, -1, 'WITHSCORES')
local found = {}
for i = 1, #leases, 2 do
  local node = leases[i]
  local info = redis.call('HMGET', k_node(node), F_KIND, F_DISTRIBUTOR)
  local alive = 0
  if tonumber(leases[i + 1]) >= now then
    alive = 1
  end
  found[#found + 1] = {
    node, info[1], info[2], alive,
    redis.call('LLEN', k_work(node)), redis.call('SCARD', k_running(node)),
  }
end
return found
