-- record_drop(fn) -> 1 when the key was done (and, unless fn is '', its function's id is fn)
-- and its record is now deleted, else 0: the cached outcome forgotten (`forget`, `cache_clear`),
-- a pending or running key left alone. Safe to repeat: a deletion is journaled (sent again, it
-- answers 1).

local found, replayed = replayed_step(again)
if found then
  return replayed
end

local state = read_record(F_STATUS, F_FUNCTION)
if state[1] ~= DONE or (fn ~= '' and state[2] ~= fn) then
  return 0
end
redis.call('DEL', KEYS[1])
return journaled_step(1)
