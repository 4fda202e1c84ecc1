-- shard_leave(node, pending1, ...) -> keys handed back: `leave` in the sharded layout, the
-- caller's records' steps having made the keys of node's running set pending again (`pending`:
-- those that ran under node). A repeated leave changes nothing and answers what the first did.

if not is_registered(node) then
  return tonumber(call('HGET', K_FAREWELLS, node) or 0)
end
local pending = {}
for i = FIRST_PENDING, #ARGV do
  pending[#pending + 1] = ARGV[i]
end
local dist = forget_node(node)
local count = give_back(node, dist, pending)
event('left', node, '', '', '', '', 'left')
emit_events()
call('HSET', K_FAREWELLS, node, count)
return count
