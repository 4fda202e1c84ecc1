-- steal(distributor, member, count) -> keys moved from the bottom of member's list.

return move_bottom(ARGV[2], ARGV[1], tonumber(ARGV[3]))
