-- record_orphan(status, mark, node1, ...) -> 1 when the record was deleted, else 0: a
-- distributor's sweep found it orphaned twice by a failover that lost the grid's write of a step
-- but kept this record's (pending on no work list, or running under an owner whose running set
-- lost it; see `_Sweep` in sharded.py). It goes as it would have gone with the grid's write in
-- the one-slot layout, but only if it is as the sweep read it: the same status, the same `mark`
-- (the submission token of a pending record, the owner of a running one), and no node waiting
-- for it but the nodes given (a node that submitted it since keeps it). Safe to repeat: a record
-- deleted already is not found again.

local state = read_record(F_STATUS, F_SUBMITTED, F_OWNER)
if state[1] ~= status then
  return 0
end
local found = (status == PENDING) and state[2] or state[3]
if (found or '') ~= mark then
  return 0
end
local seen = {}
for i = 3, #ARGV do
  seen[ARGV[i]] = true
end
local members = record_members(KEYS[1])
for _, kind in ipairs({'waiters', 'own_waiters'}) do
  for _, node in ipairs(members[kind]) do
    if not seen[node] then
      return 0
    end
  end
end
call('DEL', KEYS[1])
return 1
