-- record_submit(again, node, job, waiter, payload, token) -> {STEP_DONE, outcome} when the key is
-- done (the cached outcome); else node is now a waiter of it (its inbox in its own slot), with
-- `waiter` (a waiting request's key, or '') the wait edge's side in this record, or with `job`
-- and no waiter the job as a root; then {STEP_PENDING, shared, partial} when it is pending
-- (shared: 1 when it was pending before, 0 when this step made it so, with `payload`), or
-- {STEP_RUNNING, owner, partial} when it runs (the caller asks whether owner will complete it,
-- and if not frees it: record_requeue). partial: the latest partial outcome, or false. The
-- first step of a submission: the caller then pushes the pending keys onto a work list. Safe
-- to repeat: a second run finds the record pending and adds the same fields again. A record
-- this step makes keeps `token` (F_SUBMITTED, until claimed): sent again after its reply was
-- lost (again '1'), the step finds its own token and answers as the first run did (not
-- "shared").

local state = read_record(F_STATUS, F_OWNER, F_PARTIAL, unpack(OUTCOME_FIELDS))
local status = state[1]
if status == DONE and state[4] then
  return {STEP_DONE, joined(state, 4)}
end
local fields = {F_OWN_WAITER .. node, ''}
if waiter ~= '' then
  fields[3], fields[4] = waited_by_field(waiter), ''
elseif job ~= '' then
  fields[3], fields[4] = F_ROOT .. job, ''
end
local reply
if status == RUNNING and state[2] then
  reply = {STEP_RUNNING, state[2], state[3]}
elseif status == PENDING then
  local mine = again == '1' and call('HGET', KEYS[1], F_SUBMITTED) == token
  reply = {STEP_PENDING, mine and 0 or 1, state[3]}
else
  -- No record (or one holding edges only), a status that is none of girder's, or a done record
  -- without an outcome: pending, with this payload, and without expiry.
  local unused = {}
  fields[#fields + 1], fields[#fields + 2] = F_STATUS, PENDING
  fields[#fields + 1], fields[#fields + 2] = F_SUBMITTED, token
  add_chunks(fields, unused, F_PAYLOAD, payload)
  if status ~= false then
    for _, field in ipairs(OUTCOME_FIELDS) do
      unused[#unused + 1] = field
    end
    hdel_all(KEYS[1], {F_OWNER, F_FUNCTION, F_PARTIAL, unpack(unused)})
    redis.call('PERSIST', KEYS[1])
  end
  call('HSET', KEYS[1], unpack(fields))
  return {STEP_PENDING, 0, false}
end
call('HSET', KEYS[1], unpack(fields))
return reply
