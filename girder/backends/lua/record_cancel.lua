-- record_cancel(drop, job) -> what one key's step of cancelling job found, after deleting the
-- record's field `drop` (the root of job, or the edge of a key that no longer waits for this
-- one; '' for none): {STEP_KEPT} when the key is done, has no record, or is still needed (a
-- root or a waiting key is left); {STEP_PENDING, waiters, waits} when it was pending (or held
-- garbage) and is now deleted: its waiters are to get the cancellation notice; or
-- {STEP_RUNNING, owner, waits} when it runs: its owner is to get the notice (it stops the run
-- and completes the key with a Cancelled error), and the record's own edges are gone. waits:
-- the keys it waited for, whose side of those edges the caller drops before their own steps.
-- Safe to repeat: what it found is journaled (sent again, it answers the same).

local found, replayed = replayed_step(again)
if found then
  return replayed
end

if drop ~= '' then
  call('HDEL', KEYS[1], drop)
end
local state = read_record(F_STATUS, F_OWNER)
local status = state[1]
if status == false or status == DONE then
  return {STEP_KEPT}
end
local members = record_members(KEYS[1])
if #members.roots > 0 or #members.waited_by > 0 then
  return {STEP_KEPT}
end
if status == RUNNING and state[2] then
  local edges = {}
  for _, after in ipairs(members.waits) do
    edges[#edges + 1] = F_WAITS .. after
  end
  hdel_all(KEYS[1], edges)
  return journaled_step({STEP_RUNNING, state[2], members.waits})
end
redis.call('DEL', KEYS[1])
return journaled_step({STEP_PENDING, members.own_waiters, members.waits})
