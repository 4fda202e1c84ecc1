-- steal(token, low, again, distributor, member, count) -> keys moved from the bottom of member's
-- list (at most MAX_SCRIPT_KEYS). Journaled.

local found, reply = replayed(distributor, token, again)
if found then
  return reply
end
return journaled(distributor, token, low, move_bottom(member, distributor, tonumber(count)))
