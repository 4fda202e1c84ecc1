-- trim(distributor, member1, member2, ...) -> keys moved. Each member keeps as many keys as
-- it claimed since the last trim (the count restarts); the rest leave from the bottom.

local dist = ARGV[1]
local moved = 0
for i = 2, #ARGV do
  local member = ARGV[i]
  local keep = tonumber(redis.call('HGET', K_POPS, member) or 0)
  redis.call('HDEL', K_POPS, member)
  moved = moved + move_bottom(member, dist, redis.call('LLEN', k_work(member)) - keep)
end
return moved
