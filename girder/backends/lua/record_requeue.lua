-- record_requeue(owner, max_crashes, reaper) -> STEP_PENDING when the key, running under owner,
-- is pending again (or was already pending: a step sent again, whose first reply was lost), for
-- the caller to push back; STEP_CRASHED when owner died running it (max_crashes is not '') and
-- that was its max_crashes-th crash: it now runs under reaper, which fails it; STEP_GONE when it
-- is done, has no record, or runs under another owner (who completes it). The record's step of
-- a reap, a reconcile or a leave (owner: the node that no longer runs it), and of freeing a key
-- whose owner will not complete it (step 1b of a submission). A crash is counted once: only the
-- step that moves the record from owner counts it.

local state = read_record(F_STATUS, F_OWNER, F_CRASHES)
local status = state[1]
if status == PENDING then
  return STEP_PENDING
end
if status ~= RUNNING or state[2] ~= owner then
  return STEP_GONE
end
if max_crashes ~= '' then
  local crashes = (tonumber(state[3]) or 0) + 1
  if crashes >= tonumber(max_crashes) then
    call('HSET', KEYS[1], F_OWNER, reaper, F_CRASHES, crashes)
    return STEP_CRASHED
  end
  call('HSET', KEYS[1], F_STATUS, PENDING, F_CRASHES, crashes)
else
  call('HSET', KEYS[1], F_STATUS, PENDING)
end
call('HDEL', KEYS[1], F_OWNER)
return STEP_PENDING
