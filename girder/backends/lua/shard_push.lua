-- shard_push(token, low, again, node, into, on_top, dispatch, count, key1, ..., event1, ...):
-- the step of a submission in the grid's slot (the sharded layout), after the records' steps
-- made or found its `count` keys pending: push them on the top of `into`'s work list (on_top
-- '1') or its bottom, then, with dispatch '1', hand out `into`'s work to its waiting volunteers
-- as `hand_out(into, true)` does (without reading the records: a volunteer's claim refuses a
-- key it cannot run), and wake `into` unless the hand-out took all. The events the caller made
-- of the records' steps are published with it. Journaled (a repeat would publish them twice).

local found, reply = replayed(node, token, again)
if found then
  return reply
end
local keys, first_event = {}, FIRST_REST + tonumber(count)
for i = FIRST_REST, first_event - 1 do
  keys[#keys + 1] = ARGV[i]
end
given_events(first_event)
if on_top == '1' then
  push_top(k_work(into), keys)
else
  push_bottom(k_work(into), keys)
end
if dispatch == '1' then
  UNCLAIMABLE = {}
  hand_out(into, true)
end
if #keys > 0 and (dispatch ~= '1' or call('LLEN', k_work(into)) > 0) then
  ring(k_wake(into))
end
emit_events()
return journaled(node, token, low, 1)
