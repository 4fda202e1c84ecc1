-- members(distributor) -> the nodes with that distributor whose lease has not run out.

local now = now_ms()
local live = {}
for _, node in ipairs(redis.call('SMEMBERS', k_members(ARGV[1]))) do
  local expiry = redis.call('ZSCORE', K_LEASES, node)
  if expiry and tonumber(expiry) >= now then
    live[#live + 1] = node
  end
end
table.sort(live)
return live
