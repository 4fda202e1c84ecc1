-- inbox_take: KEYS a node's own inbox, its taken list and the slot's migration probe; ARGV
-- ttl_ms. As take.lua for an inbox in the grid's slot: every notification in the inbox, oldest
-- first, moved to the end of `taken` (which expires ttl_ms later, as the inbox does: a node
-- that dies leaves neither behind for long).
local inbox, taken = KEYS[1], KEYS[2]
local notes = redis.call('LRANGE', inbox, 0, -1)
for i = 1, #notes, 1000 do
  redis.call('RPUSH', taken, unpack(notes, i, math.min(i + 999, #notes)))
end
if #notes > 0 then
  redis.call('DEL', inbox)
end
redis.call('PEXPIRE', taken, ARGV[1]) -- none when there is no taken list
return notes
