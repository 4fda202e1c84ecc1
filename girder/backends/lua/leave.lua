-- leave(node) -> keys handed back to its distributor (0 for a node the grid never knew). A
-- repeated leave changes nothing and answers what the first one did.

if not is_registered(node) then
  return tonumber(call('HGET', K_FAREWELLS, node) or 0)
end
local count = hand_back(node, false, node)
event('left', node, '', '', '', '', 'left')
emit_events()
call('HSET', K_FAREWELLS, node, count)
return count
