-- steal(token, low, again, distributor, member, count) -> keys moved from the bottom of member's
-- list (at most MAX_SCRIPT_KEYS). Journaled.

local found, reply = replayed(distributor, token, again)
if found then
  return reply
end
local moved = move_bottom(member, distributor, tonumber(count))
if moved > 0 then
  event('stolen', distributor, '', '', member, '', tostring(moved))
  emit_events()
end
return journaled(distributor, token, low, moved)
