-- submit(token, low, again, node, into, on_top, waiter, dispatch, claim, job, looked_at,
-- own_inbox, key1, payload1, name1, key2, ...) (see REQUEST_ARGS; name: the function's, for the
-- events, or ''; looked_at: with `spread_results`, the server time (ms) when the caller looked
-- for the keys in their own slots, else ''; own_inbox '1': node's notifications go to its own
-- slot, see redis_inboxes.py) -> {results, claimed}: per request, {SUBMITTED_DONE, outcome}
-- when done, {SUBMITTED_LOOK_AGAIN} when it has no record and a moved result's record was
-- dropped since the caller looked (see redis_results.py: nothing is done for it), {SUBMITTED_CYCLE,
-- waiter, cycle...} when the wait edge closed a cycle, else {SUBMITTED_QUEUED, shared (1 when
-- the key was pending, or running under an owner that will complete it, else 0)} followed by
-- the latest partial outcome when the key has one (see publish.lua); then up to `claim`
-- requests claimed for node, {key1, payload1, ...}. Journaled (a repeat would queue the keys
-- twice).

local found, reply = replayed(node, token, again)
if found then
  return reply
end
local has_waiter, wanted = waiter ~= '', tonumber(claim)

-- A path start -> ... -> target along wait edges (breadth first), or nil.
local function path(start, target)
  if start == target then
    return {start}
  end
  local parent = {[start] = start}
  local frontier = {start}
  while #frontier > 0 do
    local next_frontier = {}
    for _, key in ipairs(frontier) do
      for _, after in ipairs(record_members(k_record(key)).waits) do
        if not parent[after] then
          parent[after] = key
          if after == target then
            local reversed = {after}
            while reversed[#reversed] ~= start do
              reversed[#reversed + 1] = parent[reversed[#reversed]]
            end
            local steps = {}
            for i = #reversed, 1, -1 do
              steps[#steps + 1] = reversed[i]
            end
            return steps
          end
          next_frontier[#next_frontier + 1] = after
        end
      end
    end
    frontier = next_frontier
  end
  return nil
end

-- Make sure `key` has a record that will run: a new one, or one whose status is garbage or
-- whose owner the grid does not know, becomes pending with this payload (and loses any expiry:
-- only a cached result may expire or be evicted): its fields go to `fields`, the arguments of
-- the caller's HSET. Returns whether the key needs queueing (it does unless it runs under a known
-- owner), and 'shared' when it was pending or runs under a known owner (the asker joins that
-- run), else 'new'.
local function ensure_record(key, payload, status, owner, fields)
  if status == RUNNING and owned(key, owner) then
    return false, 'shared'
  end
  if status == PENDING then
    return true, 'shared'
  end
  fields[#fields + 1], fields[#fields + 2] = F_STATUS, PENDING
  local unused = {}
  add_chunks(fields, unused, F_PAYLOAD, payload)
  if status ~= false then
    local record = k_record(key)
    for _, field in ipairs(OUTCOME_FIELDS) do
      unused[#unused + 1] = field
    end
    call('HDEL', record, F_OWNER, F_FUNCTION, unpack(unused))
    redis.call('PERSIST', record)
  end
  return true, 'new'
end

-- The whole outcome of a done key whose first chunk (read with the record's other fields) is
-- `first`: only a full first chunk may have others.
local function outcome_of(key, first)
  if not first or #first ~= CHUNK_BYTES then
    return first
  end
  return joined(call('HMGET', k_record(key), unpack(OUTCOME_FIELDS)), 1)
end

-- Whether a record dropped after its result moved (redis_results.py) may be one the caller did
-- not see in its look at `looked_at`: a drop came LOOK_AGAIN_MS or more after the look.
local stale_look
local function look_is_stale()
  if stale_look == nil then
    local dropped = looked_at ~= '' and tonumber(redis.call('GET', K_RESULTS_DROPPED))
    stale_look = dropped and dropped - LOOK_AGAIN_MS > tonumber(looked_at) or false
  end
  return stale_look
end

local results, pushed = {}, {}
for i = FIRST_REQUESTS, #ARGV, REQUEST_ARGS do
  local key, label = ARGV[i], ARGV[i + 2]
  local state = read_record(key, F_STATUS, F_OWNER, F_PARTIAL, F_OUTCOME)
  if state[1] == DONE and state[4] then
    results[#results + 1] = {SUBMITTED_DONE, outcome_of(key, state[4])}
    event('submitted', node, key, label, waiter, job, 'cached')
  elseif state[1] == false and look_is_stale() then
    results[#results + 1] = {SUBMITTED_LOOK_AGAIN}
  else
    -- The record's fields: its waiter, root and waited-by edge, and those of a new record.
    local fields = {(own_inbox == '1' and F_OWN_WAITER or F_WAITER) .. node, ''}
    if not has_waiter and job ~= '' then
      fields[3], fields[4] = F_ROOT .. job, ''
    end
    if has_waiter then
      fields[#fields + 1], fields[#fields + 2] = waited_by_field(waiter), ''
    end
    local queue, how = ensure_record(key, ARGV[i + 1], state[1], state[2], fields)
    if queue then
      pushed[#pushed + 1] = key
    end
    -- shared: the key was pending, or runs under an owner that will complete it
    local shared = how == 'shared' and 1 or 0
    event('submitted', node, key, label, waiter, job, how)
    call('HSET', k_record(key), unpack(fields))
    local result = {SUBMITTED_QUEUED, shared, state[3]}
    if has_waiter then
      call('HSET', k_record(waiter), F_WAITS .. key, '')
      local cycle = path(key, waiter)
      if cycle then
        result = {SUBMITTED_CYCLE, waiter}
        for _, step in ipairs(cycle) do
          result[#result + 1] = step
        end
      end
    end
    results[#results + 1] = result
  end
end

if #pushed > 0 then
  if on_top == '1' then
    push_top(k_work(into), pushed)
  else
    push_bottom(k_work(into), pushed)
  end
end
if dispatch == '1' then
  hand_out(into, true)
end
if #pushed > 0 and (dispatch ~= '1' or call('LLEN', k_work(into)) > 0) then
  ring(k_wake(into))
end
local claimed = claim_many(node, wanted)
emit_events()
return journaled(node, token, low, {results, claimed})
