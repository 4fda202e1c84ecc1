-- volunteer(distributor, node): queue node at distributor unless it is there already.

local dist, node = ARGV[1], ARGV[2]
local queue = k_volunteers(dist)
if redis.call('LPOS', queue, node) then
  return 0
end
redis.call('RPUSH', queue, node)
redis.call('SADD', k_volunteered(node), dist)
ring(k_wake(dist))
return 1
