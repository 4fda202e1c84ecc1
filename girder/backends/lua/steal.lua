-- steal(token, low, distributor, member, count) -> keys moved from the bottom of member's list (at most
-- MAX_SCRIPT_KEYS). Journaled.

local found, reply = replayed(distributor, token, low)
if found then
  return reply
end
return journaled(distributor, token, move_bottom(member, distributor, tonumber(count)))
