-- publish(node, key, outcome) -> 1 when stored and posted, else 0.
-- A partial answer of key, which node runs: unless key runs under owner node, nothing changes.
-- Otherwise outcome replaces the record's latest partial (only the latest is kept) and every
-- waiter but node (and but a departed one) gets a partial notification; the waiters stay.
-- Publishing the latest partial again (a call sent again after its reply was lost) notifies
-- nobody twice.

local state = read_record(key, F_STATUS, F_OWNER, F_PARTIAL)
if state[1] ~= RUNNING or state[2] ~= node then
  return 0
end
if state[3] == outcome then
  return 1
end
call('HSET', k_record(key), F_PARTIAL, outcome)
local note = '~' .. #key .. ':' .. key .. outcome
for _, waiter in ipairs(record_members(k_record(key)).waiters) do
  if waiter ~= node and not has_departed(waiter) then
    call('RPUSH', k_inbox(waiter), note)
  end
end
return 1
