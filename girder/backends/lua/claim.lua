-- claim(token, low, again, node) -> {key, payload} or nil (see `claim` in common.lua). Journaled.

local found, reply = replayed(node, token, again)
if found then
  return reply
end
local claimed = claim(node, false)
emit_events()
if not claimed then
  return nil -- nothing claimed: nothing to replay
end
return journaled(node, token, low, {claimed[1], claimed[2]})
