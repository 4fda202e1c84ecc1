-- steal(distributor, member, count) -> keys moved from the bottom of member's list (at most
-- MAX_SCRIPT_KEYS).

return move_bottom(member, distributor, tonumber(count))
