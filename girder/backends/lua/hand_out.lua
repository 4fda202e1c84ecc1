-- hand_out(token, low, distributor, even_share) -> {key1, volunteer1, key2, volunteer2, ...}.
-- Journaled.

local found, reply = replayed(distributor, token, low)
if found then
  return reply
end
return journaled(distributor, token, hand_out(distributor, even_share == '1', now_ms()))
