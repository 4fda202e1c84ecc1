-- heartbeat(node, ttl_ms) -> 1, or 0 when the node is not registered.

local node = ARGV[1]
if not redis.call('ZSCORE', K_LEASES, node) then
  return 0
end
redis.call('ZADD', K_LEASES, now_ms() + tonumber(ARGV[2]), node)
return 1
