-- acknowledge(node, received): settle what node's last wait took. `taken` holds the
-- notifications that wait moved out of the inbox: when its reply arrived (received is '1') they
-- are dropped, otherwise (the reply was lost) they go back to the front of the inbox, in order,
-- to be delivered again.

local node, received = ARGV[1], ARGV[2] == '1'
local inbox, taken = k_inbox(node), k_taken(node)
if received then
  redis.call('DEL', taken)
else
  while redis.call('LMOVE', taken, inbox, 'RIGHT', 'LEFT') do
  end
end
return 0
