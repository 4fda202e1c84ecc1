-- record_hand_over(from, to) -> 1 when the key now runs under `to` (it ran under `from`, or under
-- `to` already: a step sent again), else 0: a reap's last step for a key that reached its crash
-- limit (see record_requeue), after the grid's step put it in the reaper's running set.

local state = read_record(F_STATUS, F_OWNER)
if state[1] ~= RUNNING or (state[2] ~= from and state[2] ~= to) then
  return 0
end
if state[2] == from then
  call('HSET', KEYS[1], F_OWNER, to)
end
return 1
