-- reap(token, low, again, reaper, max_crashes) -> {dead nodes, keys requeued, keys crashed out,
-- the dead nodes whose inbox was in their own slot (their caller deletes it)}. Journaled: the keys that crashed out are owned by the reaper, which must fail them. A reaper
-- whose own lease ran out (or that is not registered) reaps nobody (see base.py).

local found, reply = replayed(reaper, token, again)
if found then
  return reply
end
local limit = tonumber(max_crashes)
local grid = reaping(reaper)
if not grid then
  return journaled(reaper, token, low, {{}, 0, {}, {}})
end
local dead = call('ZRANGEBYSCORE', K_LEASES, '-inf', '(' .. grid)
table.sort(dead)
local requeued, crashed_out, own_inboxes = 0, {}, {}
for _, node in ipairs(dead) do
  if call('HGET', k_node(node), F_OWN_INBOX) == '1' then
    own_inboxes[#own_inboxes + 1] = node
  end
  local count, crashed = hand_back(node, limit, reaper)
  event('left', node, '', '', '', '', 'reaped')
  requeued = requeued + count
  for _, key in ipairs(crashed) do
    crashed_out[#crashed_out + 1] = key
  end
end
emit_events()
return journaled(reaper, token, low, {dead, requeued, crashed_out, own_inboxes})
