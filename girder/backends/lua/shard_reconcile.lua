-- shard_reconcile(token, low, again, node, ndrop, drop1, ..., pending1, ...) -> keys given back:
-- `reconcile` in the sharded layout. The caller read node's running set, and its records' steps
-- made those of the keys node does not run (`drop`) that ran under node pending again
-- (`pending`): the `drop` keys leave the running set, and the `pending` ones go to the bottom
-- of node's distributor's work list (of its own without one). Journaled.

local found, reply = replayed(node, token, again)
if found then
  return reply
end
local drop, pending, first_pending = {}, {}, FIRST_REST + tonumber(ndrop)
for i = FIRST_REST, first_pending - 1 do
  drop[#drop + 1] = ARGV[i]
end
for i = first_pending, #ARGV do
  pending[#pending + 1] = ARGV[i]
end
for i = 1, #drop, BATCH do
  call('SREM', k_running(node), unpack(drop, i, math.min(i + BATCH - 1, #drop)))
end
local target = call('HGET', k_node(node), F_DISTRIBUTOR) or node
push_bottom(k_work(target), pending)
if #pending > 0 then
  ring(k_wake(target))
end
return journaled(node, token, low, #pending)
