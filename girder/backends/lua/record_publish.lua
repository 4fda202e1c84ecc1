-- record_publish(node, outcome) -> {stored, waiters, again}: stored 1 when the key runs under
-- node and outcome is now its latest partial answer (else 0, and nothing changed); waiters:
-- the nodes to tell (each its inbox in its own slot), but node; again 1 when outcome was its
-- latest partial already (a step sent again: the caller's posts, keyed by their token, post
-- nothing twice).

local state = read_record(F_STATUS, F_OWNER, F_PARTIAL)
if state[1] ~= RUNNING or state[2] ~= node then
  return {0, {}, 0}
end
local again = state[3] == outcome
if not again then
  call('HSET', KEYS[1], F_PARTIAL, outcome)
end
local waiters = {}
for _, waiter in ipairs(record_members(KEYS[1]).own_waiters) do
  if waiter ~= node then
    waiters[#waiters + 1] = waiter
  end
end
return {1, waiters, again and 1 or 0}
