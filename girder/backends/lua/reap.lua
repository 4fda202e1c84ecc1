-- reap(reaper, max_crashes) -> {dead nodes, keys requeued, keys crashed out}

local reaper, max_crashes = ARGV[1], tonumber(ARGV[2])
local dead = redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', '(' .. now_ms())
table.sort(dead)
local requeued, crashed_out = 0, {}
for _, node in ipairs(dead) do
  local count, crashed = hand_back(node, max_crashes, reaper)
  requeued = requeued + count
  for _, key in ipairs(crashed) do
    crashed_out[#crashed_out + 1] = key
  end
end
return {dead, requeued, crashed_out}
