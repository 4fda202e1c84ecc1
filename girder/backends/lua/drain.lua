-- drain(node, received) -> the notifications in node's inbox; empties it. `taken` holds what the
-- node's last blocking wait moved out of the inbox: when the node got that reply (received is
-- '1') it is dropped, otherwise (the reply was lost) it is delivered again here.

local node, received = ARGV[1], ARGV[2] == '1'
local inbox, taken = k_inbox(node), k_taken(node)
local notes = {}
if not received then
  notes = redis.call('LRANGE', taken, 0, -1)
end
for _, note in ipairs(redis.call('LRANGE', inbox, 0, -1)) do
  notes[#notes + 1] = note
end
redis.call('DEL', inbox, taken)
return notes
