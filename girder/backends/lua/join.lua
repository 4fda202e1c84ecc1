-- join(node, kind, distributor, ttl_ms, own_inbox): register or renew a node ('' for no
-- distributor); own_inbox '1': its notifications go to its own slot (see redis_inboxes.py).

local info = k_node(node)
local old = call('HGET', info, F_DISTRIBUTOR)
if old then
  call('SREM', k_members(old), node)
end
redis.call('DEL', info)
call('HSET', info, F_KIND, kind)
if own_inbox == '1' then
  call('HSET', info, F_OWN_INBOX, '1')
end
if distributor ~= '' then
  call('HSET', info, F_DISTRIBUTOR, distributor)
  call('SADD', k_members(distributor), node)
end
call('ZADD', K_LEASES, advance_grid_time() + tonumber(ttl_ms), node)
call('ZREM', K_DEPARTED, node)
call('HDEL', K_FAREWELLS, node)
event('joined', node, '', '', distributor, '', kind)
emit_events()
return 1
