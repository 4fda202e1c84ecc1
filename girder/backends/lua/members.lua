-- members(distributor) -> the nodes with that distributor whose lease has not run out.

local _, now = grid_time()
local live = {}
for _, node in ipairs(call('SMEMBERS', k_members(distributor))) do
  if is_live(node, now) then
    live[#live + 1] = node
  end
end
table.sort(live)
return live
