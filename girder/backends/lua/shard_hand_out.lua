-- shard_hand_out(token, low, again, distributor, even_share, unclaimable1, ...) -> {key1,
-- volunteer1, ...}: `hand_out` in the sharded layout, where it cannot read the records: the keys
-- the caller found nobody can claim (it read the records of the list's top first) are dropped
-- when they come up, any other is handed out. Journaled.

local found, reply = replayed(distributor, token, again)
if found then
  return reply
end
UNCLAIMABLE = {}
for i = FIRST_UNCLAIMABLE, #ARGV do
  UNCLAIMABLE[ARGV[i]] = true
end
return journaled(distributor, token, low, hand_out(distributor, even_share == '1'))
