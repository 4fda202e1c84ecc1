-- cancel(token, low, again, node, job, below, root1, root2, ...) -> {cancelled keys, keys left to
-- look at, posts (as in complete.lua: the whole notices, for nodes whose inbox is in their own
-- slot)}. Journaled. One step of cancelling `job` (node repeats it until nothing is left). The
-- first step (the roots are passed only then) removes the job from its roots' roots (or, with
-- `below`, drops the wait edges of that request, which ran out of time) and puts the keys on the
-- job's `cancelling` list. Then each key taken from that
-- list that no job roots and no key waits for is cancelled: its edges to the keys it waits for
-- go (those keys join the list), and a pending key's record is deleted (it is never started)
-- and its waiters get a notice, while a running key's owner gets the notice (it stops the run
-- and completes the key with a Cancelled error). Done keys, and keys still needed, stay.

local found, reply = replayed(node, token, again)
if found then
  return reply
end
local frontier = k_cancelling(job)
if below == '' then
  for i = FIRST_ROOTS, #ARGV do
    local key = ARGV[i]
    call('HDEL', k_record(key), F_ROOT .. job)
    call('RPUSH', frontier, key)
  end
else
  local waits = {}
  for _, key in ipairs(record_members(k_record(below)).waits) do
    call('HDEL', k_record(key), waited_by_field(below))
    call('RPUSH', frontier, key)
    waits[#waits + 1] = F_WAITS .. key
  end
  hdel_all(k_record(below), waits)
end

local function notice(key)
  return '!' .. #key .. ':' .. key .. job
end

local function cancel(key, state, members)
  local status, owner = state[1], state[2]
  if status == false or status == DONE then
    return false
  end
  local record, waits = k_record(key), {}
  for _, after in ipairs(members.waits) do
    call('HDEL', k_record(after), waited_by_field(key))
    call('RPUSH', frontier, after)
    waits[#waits + 1] = F_WAITS .. after
  end
  if status == RUNNING and owned(key, owner) then
    hdel_all(record, waits)
    post_note(owner, nil, notice(key), '')
  else
    notify_waiters(members, nil, notice(key), '')
    redis.call('DEL', record)
    event('cancelled', node, key, '', '', job, '')
  end
  return true
end

local cancelled = {}
for _ = 1, MAX_CANCEL_STEP do
  local key = call('LPOP', frontier)
  if not key then
    break
  end
  local state = read_record(key, F_STATUS, F_OWNER)
  local members = record_members(k_record(key))
  if #members.roots == 0 and #members.waited_by == 0 and cancel(key, state, members) then
    cancelled[#cancelled + 1] = key
  end
end
emit_events()
return journaled(node, token, low, {cancelled, call('LLEN', frontier), POSTS})
