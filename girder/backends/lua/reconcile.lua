-- reconcile(token, low, again, node, keep1, keep2, ...) -> keys given back (journaled). Node's
-- running set names keys the node does not run (the server lost writes, or a claim's reply was
-- lost): every key in it that is not in `keep` and still runs under node becomes pending again,
-- at the bottom of node's distributor's list (or of its own list without one).

local found, reply = replayed(node, token, again)
if found then
  return reply
end
local keep = {}
for i = FIRST_KEEP, #ARGV do
  keep[ARGV[i]] = true
end
local running = k_running(node)
local requeue = {}
for _, key in ipairs(call('SMEMBERS', running)) do
  if not keep[key] then
    call('SREM', running, key)
    local state = read_record(key, F_STATUS, F_OWNER)
    if state[1] == RUNNING and state[2] == node then
      local record = k_record(key)
      call('HSET', record, F_STATUS, PENDING)
      call('HDEL', record, F_OWNER)
      requeue[#requeue + 1] = key
    end
  end
end
local target = call('HGET', k_node(node), F_DISTRIBUTOR) or node
push_bottom(k_work(target), requeue)
if #requeue > 0 then
  ring(k_wake(target))
end
return journaled(node, token, low, #requeue)
