-- hand_out(token, low, again, distributor, even_share) -> {key1, volunteer1, key2, volunteer2,
-- ...}. Journaled.

local found, reply = replayed(distributor, token, again)
if found then
  return reply
end
return journaled(distributor, token, low, hand_out(distributor, even_share == '1'))
