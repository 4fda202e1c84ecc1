-- acknowledge(node, received): settle what node's last wait took. `taken` holds the
-- notifications that wait moved out of the inbox: when its reply arrived (received is '1') they
-- are dropped, otherwise (the reply was lost) they go back to the front of the inbox, in order,
-- to be delivered again. (An inbox of the wrong type fails the BLMOVE that follows in the same
-- pipeline; the backend repairs it then and waits again.)

local inbox, taken = k_inbox(node), k_taken(node)
if received == '1' then
  redis.call('DEL', taken)
else
  while call('LMOVE', taken, inbox, 'RIGHT', 'LEFT') do
  end
end
return 0
