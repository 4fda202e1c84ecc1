-- inbox_settle: KEYS a node's own inbox, its taken list and the slot's migration probe; ARGV
-- received ('1' or '0'), ttl_ms. As acknowledge.lua for an inbox in the grid's slot: when the
-- last wait's reply arrived, what it took goes; otherwise it goes back to the front of the
-- inbox, in order, to be delivered again. Garbage of another type in either is deleted (so
-- that the BLMOVE after this finds none).
local inbox, taken = KEYS[1], KEYS[2]
if redis.call('TYPE', inbox).ok ~= 'list' then
  redis.call('DEL', inbox) -- none, or garbage
end
if ARGV[1] == '1' then
  redis.call('DEL', taken)
  return 0
end
local moved = redis.pcall('LMOVE', taken, inbox, 'RIGHT', 'LEFT')
if type(moved) == 'table' and moved.err then
  redis.call('DEL', taken)
  return 0
end
if moved then
  while moved do
    moved = redis.call('LMOVE', taken, inbox, 'RIGHT', 'LEFT')
  end
  redis.call('PEXPIRE', inbox, ARGV[2])
end
return 0
