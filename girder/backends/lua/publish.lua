-- publish(node, key, outcome) -> {stored, posts}: stored is 1 when stored and posted, else 0;
-- posts as in complete.lua, the head of each being "~<len(key)>:<key>" (its tail: outcome).
-- A partial answer of key, which node runs: unless key runs under owner node, nothing changes.
-- Otherwise outcome replaces the record's latest partial (only the latest is kept) and every
-- waiter but node (and but a departed one) gets a partial notification; the waiters stay.
-- Publishing the latest partial again (a call sent again after its reply was lost) pushes
-- nothing twice here, and reports the waiters in their own slots again (a stream drops an
-- answer it already has).

local state = read_record(key, F_STATUS, F_OWNER, F_PARTIAL)
if state[1] ~= RUNNING or state[2] ~= node then
  return {0, POSTS}
end
local again = state[3] == outcome
if not again then
  call('HSET', k_record(key), F_PARTIAL, outcome)
end
notify_waiters(record_members(k_record(key)), node, '~' .. #key .. ':' .. key, outcome, again)
return {1, POSTS}
