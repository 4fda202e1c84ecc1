-- inbox_settle: KEYS a node's own inbox, its taken list and the slot's migration probe; ARGV
-- received ('1' or '0'), ttl_ms. As acknowledge.lua for an inbox in the grid's slot: when the
-- last wait's reply arrived, what it took goes; otherwise it goes back to the front of the
-- inbox, in order, to be delivered again. Garbage of another type in either is deleted.
local inbox, taken = KEYS[1], KEYS[2]
for _, key in ipairs({inbox, taken}) do
  local kind = redis.call('TYPE', key).ok
  if kind ~= 'list' and kind ~= 'none' then
    redis.call('DEL', key)
  end
end
if ARGV[1] == '1' then
  redis.call('DEL', taken)
elseif redis.call('EXISTS', taken) == 1 then
  while redis.call('LMOVE', taken, inbox, 'RIGHT', 'LEFT') do
  end
  redis.call('PEXPIRE', inbox, ARGV[2])
end
return 0
