-- join(node, kind, has_distributor, distributor, ttl_ms): register or renew a node.

local node, kind, has_dist, dist = ARGV[1], ARGV[2], ARGV[3] == '1', ARGV[4]
local info = k_node(node)
local old = redis.call('HGET', info, F_DISTRIBUTOR)
if old then
  redis.call('SREM', k_members(old), node)
end
redis.call('DEL', info)
redis.call('HSET', info, F_KIND, kind)
if has_dist then
  redis.call('HSET', info, F_DISTRIBUTOR, dist)
  redis.call('SADD', k_members(dist), node)
end
redis.call('ZADD', K_LEASES, now_ms() + tonumber(ARGV[5]), node)
return 1
