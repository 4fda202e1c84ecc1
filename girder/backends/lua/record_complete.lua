-- record_complete(node, outcome, cache, ttl_ms, fn) -> {STEP_DONE, waiters, waits, waited_by}
-- when this step completed the key; {STEP_GONE, {}, waits, waited_by} when the key had no record
-- (its edges, if it held any, are gone now); {STEP_RUNNING} when it is done already or runs
-- under another owner (that run completes it; nothing changes). The first step of a
-- completion: the caller then posts to the waiters (nodes, each its inbox in its own slot, but
-- node), drops the other side of each edge (waits: the keys this one waited for; waited_by: the
-- keys that waited for it) and drops the key from node's running set. With cache '1' the
-- record keeps the outcome and fn (the function's id in the grid's table) and expires after
-- ttl_ms (0: never), its payload, owner and members gone; with '0' it is deleted. Who may
-- complete: the owner while it runs, anyone while nobody does (see complete.lua). Safe to
-- repeat: a second run finds the key done and changes nothing, and the reply of a run that
-- changed something is journaled (sent again, it answers the same).

local found, replayed = replayed_step(again)
if found then
  return replayed
end

local state = read_record(F_STATUS, F_OWNER)
local status, owner = state[1], state[2]
if status == DONE or (status == RUNNING and owner and owner ~= node) then
  return {STEP_RUNNING}
end
local members = record_members(KEYS[1])
local stale = members.fields
if status == false then
  hdel_all(KEYS[1], stale)
  return journaled_step({STEP_GONE, {}, members.waits, members.waited_by})
end
if cache == '0' then
  redis.call('DEL', KEYS[1])
else
  local args, unused = {F_STATUS, DONE, F_FUNCTION, fn}, {}
  add_chunks(args, unused, F_OUTCOME, outcome)
  if status ~= PENDING and status ~= RUNNING then
    for _, field in ipairs(unused) do -- garbage may hold an outcome's further chunks
      stale[#stale + 1] = field
    end
  end
  call('HSET', KEYS[1], unpack(args))
  stale[#stale + 1], stale[#stale + 2], stale[#stale + 3] = F_OWNER, F_CRASHES, F_PARTIAL
  for _, field in ipairs(PAYLOAD_FIELDS) do
    stale[#stale + 1] = field
  end
  hdel_all(KEYS[1], stale)
  if tonumber(ttl_ms) > 0 then
    redis.call('PEXPIRE', KEYS[1], ttl_ms)
  end
end
local waiters = {}
for _, waiter in ipairs(members.own_waiters) do
  if waiter ~= node then
    waiters[#waiters + 1] = waiter
  end
end
local reply = {STEP_DONE, waiters, members.waits, members.waited_by}
if #waiters == 0 and #members.waits == 0 and #members.waited_by == 0 then
  return reply -- a resend answers "done already": there is nothing it could miss but an event
end
return journaled_step(reply)
