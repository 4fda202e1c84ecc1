-- drain(node) -> the notifications in node's inbox; empties it and silences its bell.

local node = ARGV[1]
local inbox = k_inbox(node)
local notes = redis.call('LRANGE', inbox, 0, -1)
redis.call('DEL', inbox, k_bell(node))
return notes
