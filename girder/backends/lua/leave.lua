-- leave(node) -> keys handed back to its distributor (0 for an unknown node).

if not is_registered(node) then
  return 0
end
local count = hand_back(node, false, node)
return count
