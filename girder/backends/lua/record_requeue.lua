-- record_requeue(owner, max_crashes) -> STEP_PENDING when the key, running under owner, is
-- pending again (or was already pending: a step sent again, whose first reply was lost), for
-- the caller to push back; STEP_CRASHED when owner died running it (max_crashes is not '') and
-- that was its max_crashes-th crash: it stays running under owner, and the caller hands it over
-- to the reaper (record_hand_over), which fails it; STEP_GONE when it is done, has no record,
-- or runs under another owner (who completes it). The record's step of a reap, a reconcile or a
-- leave (owner: the node that no longer runs it), and of freeing a key whose owner will not
-- complete it (step 1b of a submission). A crash is counted once: only the step that moves the
-- record from owner counts it, and a key at its limit still under owner is reported again
-- without counting.

local state = read_record(F_STATUS, F_OWNER, F_CRASHES)
local status = state[1]
if status == PENDING then
  return STEP_PENDING
end
if status ~= RUNNING or state[2] ~= owner then
  return STEP_GONE
end
if max_crashes ~= '' then
  local crashes = tonumber(state[3]) or 0
  if crashes >= tonumber(max_crashes) then
    return STEP_CRASHED
  end
  crashes = crashes + 1
  call('HSET', KEYS[1], F_CRASHES, crashes)
  if crashes >= tonumber(max_crashes) then
    return STEP_CRASHED
  end
end
call('HSET', KEYS[1], F_STATUS, PENDING)
call('HDEL', KEYS[1], F_OWNER)
return STEP_PENDING
