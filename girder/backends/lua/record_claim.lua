-- record_claim(node) -> {STEP_CLAIMED, payload, crashed} when the key now runs under node (it
-- was pending, or held a status that is none of girder's; crashed: 1 when it killed a worker
-- before), {STEP_RUNNING, owner} when it runs under another owner, or {STEP_GONE} when it is
-- done or has no record: the claim's second step, after the caller popped the key into node's
-- running set. Safe to repeat: a key already running under node is claimed again, with its
-- payload (the first reply may have been lost). A record without a payload is claimed with an
-- empty one: the worker fails it as malformed, so whoever waits for it hears why.

local state = read_record(F_STATUS, F_OWNER, F_CRASHES, unpack(PAYLOAD_FIELDS))
local status, owner = state[1], state[2]
if status == false or status == DONE then
  return {STEP_GONE}
end
if status == RUNNING and owner and owner ~= node then
  return {STEP_RUNNING, owner}
end
if status ~= RUNNING or owner ~= node then
  call('HSET', KEYS[1], F_STATUS, RUNNING, F_OWNER, node)
  call('HDEL', KEYS[1], F_SUBMITTED)
end
return {STEP_CLAIMED, joined(state, 4) or '', state[3] and 1 or 0}
