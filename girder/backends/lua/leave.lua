-- leave(node) -> keys handed back to its distributor (0 for an unknown node).

local node = ARGV[1]
if not redis.call('ZSCORE', K_LEASES, node) then
  return 0
end
local count = hand_back(node, false, node)
return count
