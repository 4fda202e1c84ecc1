-- complete(token, low, again, node, claim, volunteer_at, failures, mover, key1, outcome1,
-- cache1, ttl_ms1, function1, key2, ...) (see COMPLETION_ARGS; failures: '' or a JSON object,
-- failed key -> its readable error chain, for the events): complete each key in order, then
-- claim up to `claim` of node's requests; when none came and volunteer_at is not empty,
-- volunteer node there. A cached outcome stays in the record, which
-- then expires after ttl_ms (0: never): the grid's only state with an expiry, so the only state
-- a volatile-* maxmemory-policy may evict. A done record keeps no payload: nothing runs it
-- again, and a submission that makes it pending again brings its own.
-- cache is '0' (not cached), '1' (cached) or 'm' (cached, and the caller moves it to its key's
-- own slot: see redis_results.py): a record cached with no expiry, or one at least
-- MOVE_MIN_TTL_MS away, is marked with the token `mover` (F_MOVER) and reported, the first
-- step of its move.
-- Returns {claimed, moves, posts}: claimed is {key1, payload1, key2, payload2, ...} for the
-- claimed requests; moves is {key1, function id1, ttl_ms1 (-1: none), outcome1, ...} for the
-- marked records (sent again, it reports the records marked with its token again); posts is
-- POSTS (common.lua): the waiters in their own slots to tell, each with the head
-- "<len(key)>:<key>" of its notification, whose tail is key's outcome. Journaled when it
-- claims or reports posts. Only the
-- completion that made a key done marks it (a second completion, say by a worker that woke
-- past its lease, changes nothing), so one process moves it.
--
-- Who may complete a key: its owner while it runs; anyone while nobody runs it (pending, or no
-- record: a node that was reaped while stalled finishing late; its outcome is as good as any,
-- since a request's value depends only on its key). A completion for a key that is done, or
-- that now runs under another owner, changes nothing but node's running set: that other run
-- completes the key.

local found, reply = replayed(node, token, again)
if found then
  return reply
end
local wanted = tonumber(claim)
local errors = {}
if EVENTS_MAX > 0 and failures ~= '' then
  errors = cjson.decode(failures)
end

-- Drop the wait edges between `key` and each of `others` (of key's record_members): `key`
-- waits for them (`waits`) or they wait for key (`waited_by`), on the others' side only.
local function drop_edges_of_others(key, members)
  for _, other in ipairs(members.waits) do
    call('HDEL', k_record(other), waited_by_field(key))
  end
  for _, other in ipairs(members.waited_by) do
    call('HDEL', k_record(other), F_WAITS .. key)
  end
end

-- Report the move of `key` (see `moves` below).
local moves = {}
local function report_move(key, id, ttl_ms, outcome)
  for _, value in ipairs({key, id, ttl_ms, outcome}) do
    moves[#moves + 1] = value
  end
end

local function complete(key, outcome, cache, ttl_ms, fn)
  call('SREM', k_running(node), key)
  local state = read_record(key, F_STATUS, F_OWNER, F_MOVER, F_FUNCTION)
  local status, owner = state[1], state[2]
  if status == DONE and mover ~= '' and state[3] == mover then
    -- Sent again (its reply was lost): the same move as the first time, unless someone took
    -- the record's function or outcome since (then it stays where it is).
    local record = k_record(key)
    local first = joined(call('HMGET', record, unpack(OUTCOME_FIELDS)), 1)
    if state[4] and first then
      report_move(key, state[4], redis.call('PTTL', record), first)
    end
    return
  end
  if status == DONE or (status == RUNNING and owner ~= node) then
    return
  end
  local record = k_record(key)
  local members = record_members(record)
  drop_edges_of_others(key, members)
  local stale = members.fields
  if status == false then
    -- No record (a repeat, or the record was lost; or only the edges of a key that waits):
    -- nothing to store, nobody to tell.
    hdel_all(record, stale)
    return
  end
  if cache ~= '0' then
    local id = function_id(fn)
    local args, unused = {F_STATUS, DONE, F_FUNCTION, id}, {}
    add_chunks(args, unused, F_OUTCOME, outcome)
    if status ~= PENDING and status ~= RUNNING then
      -- A status that is none of girder's (garbage): the record may hold an outcome, whose
      -- chunks past the new one's must go. A record girder made pending or running holds none.
      for _, field in ipairs(unused) do
        stale[#stale + 1] = field
      end
    end
    call('HSET', record, unpack(args))
    stale[#stale + 1], stale[#stale + 2], stale[#stale + 3] = F_OWNER, F_CRASHES, F_PARTIAL
    for _, field in ipairs(PAYLOAD_FIELDS) do
      stale[#stale + 1] = field
    end
    hdel_all(record, stale)
    if ttl_ms > 0 then
      redis.call('PEXPIRE', record, ttl_ms)
    end
    if cache == 'm' and (ttl_ms == 0 or ttl_ms > MOVE_MIN_TTL_MS) then
      call('HSET', record, F_MOVER, mover)
      report_move(key, id, ttl_ms == 0 and -1 or ttl_ms, outcome)
    end
  else
    redis.call('DEL', record)
  end
  if errors[key] then
    event('failed', node, key, '', '', '', errors[key])
  else
    event('finished', node, key, '', '', '', cache ~= '0' and 'cached' or '')
  end
  notify_waiters(members, node, #key .. ':' .. key, outcome)
end

for i = FIRST_COMPLETIONS, #ARGV, COMPLETION_ARGS do
  complete(ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3]), ARGV[i + 4])
end

local claimed = claim_many(node, wanted)
if wanted > 0 and #claimed == 0 and volunteer_at ~= '' then
  volunteer(volunteer_at, node)
end
emit_events()
if #claimed == 0 and #POSTS == 0 then
  return {claimed, moves, POSTS} -- a resend repeats only what changes nothing
end
return journaled(node, token, low, {claimed, moves, POSTS})
