-- shard_events(token, low, again, node, event1, event2, ...): publish the events that node made
-- of what its records' steps did after its last step in the grid's slot (see given_events).
-- Journaled (a resend would publish them twice).

local found, reply = replayed(node, token, again)
if found then
  return reply
end
given_events(FIRST_EVENTS)
emit_events()
return journaled(node, token, low, 1)
