-- Helpers shared by every script. The names used here (k_record, k_work, K_LEASES, F_STATUS,
-- SUBMITTED_DONE, MAX_SCRIPT_KEYS, ...) are generated above this by redis_keys.py and
-- redis_scripts.py, and so are the script's argument names (`local node = ARGV[3]`).
--
-- Redis does not roll back what a script wrote before an error. So no script may fail half way:
-- each reads what it decides on before its first write, and every command goes through `call`,
-- which repairs a key holding a value of the wrong type (garbage written by hand) instead of
-- failing: the key is deleted, noted in K_CORRUPT and the server log, and the command runs again
-- on the now empty key.

-- Values per LPUSH, RPUSH or HDEL: Lua's unpack() handles only a few thousand at once.
local BATCH = 1000

local function note_corrupt(key)
  redis.pcall('LPUSH', K_CORRUPT, key)
  redis.pcall('LTRIM', K_CORRUPT, 0, 99)
  redis.log(redis.LOG_WARNING, 'girder: deleted ' .. key .. ': it held a value of the wrong type')
end

local function call(command, key, ...)
  local reply = redis.pcall(command, key, ...)
  if type(reply) == 'table' and reply.err then
    if string.sub(reply.err, 1, 9) ~= 'WRONGTYPE' then
      error(reply)
    end
    redis.call('DEL', key)
    note_corrupt(key)
    return redis.call(command, key, ...)
  end
  return reply
end

-- The grid events of this script call (see `StateBackend.events`): `event` collects them and
-- `emit_events` appends them as one entry to the list K_EVENTS before the script returns (one
-- RPUSH per call, however many events: about half the Redis time of an XADD). An entry is the
-- server's time (seconds \031 microseconds) and the events, each its fields joined by \031,
-- all joined by \030 (no table per event, no JSON: this runs on every request). The list is
-- capped at EVENTS_MAX entries: past EVENTS_MAX + EVENTS_SLACK, the oldest are dropped in one
-- LTRIM and K_EVENTS_BASE (the number of the list's first entry) advances by as many. With
-- EVENTS_MAX = 0 nothing is published; nor while nobody watches: only while K_EVENTS_WATCHED
-- (set by every read, expiring EVENTS_WATCH_MS later) exists, looked up once per call.
local EVENTS = {}

local WATCHED = nil

-- Whether events are published now (looked up once per call).
local function watched()
  if EVENTS_MAX > 0 and WATCHED == nil then
    WATCHED = redis.call('EXISTS', K_EVENTS_WATCHED) == 1
  end
  return EVENTS_MAX > 0 and WATCHED
end

local function event(kind, node, key, name, parent, job, detail)
  if watched() then
    EVENTS[#EVENTS + 1] = kind .. '\031' .. node .. '\031' .. (key or '') .. '\031'
      .. (name or '') .. '\031' .. (parent or '') .. '\031' .. (job or '') .. '\031'
      .. (detail or '')
  end
end

-- Collect the events ARGV[first], ARGV[first + 1], ..., each its fields joined by \031 as
-- `event` joins them: those that the caller of a step of the sharded layout made of what the
-- records' steps found (they run in other slots, where no event list is).
local function given_events(first)
  if watched() then
    for i = first, #ARGV do
      EVENTS[#EVENTS + 1] = ARGV[i]
    end
  end
end

local function emit_events()
  if #EVENTS > 0 then
    local t = redis.call('TIME')
    local length = call('RPUSH', K_EVENTS,
      t[1] .. '\031' .. t[2] .. '\030' .. table.concat(EVENTS, '\030'))
    if length > EVENTS_MAX + EVENTS_SLACK then
      local drop = length - EVENTS_MAX
      redis.call('LTRIM', K_EVENTS, drop, -1)
      redis.call('SET', K_EVENTS_BASE, (tonumber(call('GET', K_EVENTS_BASE)) or 0) + drop)
    end
    EVENTS = {}
  end
end

-- Redis server time in milliseconds: leases never depend on the clients' clocks.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The grid's clock, in ms, on which leases are kept: the server's time, except that between two
-- events that show the grid is served (a heartbeat, a join, a reap) it advances at most
-- GRID_TICK_MS. A server that stalls (a slow fork or fsync, a VM pause) jumps its own clock;
-- judged by that, every lease would have run out, and a reap that ran first after the stall
-- would declare live nodes dead before their queued heartbeats arrive. Returns the server time
-- and the grid time.
local function grid_time()
  local kept = call('HMGET', K_TIMEKEEPER, 'server', 'grid')
  local now = now_ms()
  if not kept[1] or not kept[2] then
    return now, now
  end
  local elapsed = math.min(math.max(now - tonumber(kept[1]), 0), GRID_TICK_MS)
  return now, tonumber(kept[2]) + elapsed
end

-- The grid time, moved on to now (see grid_time).
local function advance_grid_time()
  local now, grid = grid_time()
  call('HSET', K_TIMEKEEPER, 'server', now, 'grid', grid)
  return grid
end

-- A node is registered while it has a lease entry (even one that ran out and is not reaped yet).
local function is_registered(node)
  return call('ZSCORE', K_LEASES, node) ~= false
end

-- A node that left or was reaped (until a node of that name joins again).
local function has_departed(node)
  return call('ZSCORE', K_DEPARTED, node) ~= false
end

-- Notifications for nodes whose inbox lives in their own slot (Settings.spread_notifications),
-- which no script of the grid may touch: {node1, note1, node2, note2, ...}, reported to the
-- caller, which posts them there (see redis_inboxes.py).
local POSTS = {}

-- Post the notification head .. tail to node `target`: into its inbox here, or, when its inbox
-- is in its own slot (`own`; nil: as its hash says), reported in POSTS as its head alone (the
-- caller holds the tail: an outcome it sent). A departed node gets nothing: its inbox would
-- only grow. With `again` (a call sent again after its reply was lost) only the report is made
-- again: what was pushed here stays.
local function post_note(target, own, head, tail, again)
  if has_departed(target) then
    return
  end
  if own == nil then
    own = call('HGET', k_node(target), F_OWN_INBOX) == '1'
  end
  if own then
    POSTS[#POSTS + 1] = target
    POSTS[#POSTS + 1] = head
  elseif not again then
    call('RPUSH', k_inbox(target), head .. tail)
  end
end

-- Post head .. tail (see post_note) to each waiter of a record's `members` but node `but`.
local function notify_waiters(members, but, head, tail, again)
  for _, waiter in ipairs(members.waiters) do
    if waiter ~= but then
      post_note(waiter, false, head, tail, again)
    end
  end
  for _, waiter in ipairs(members.own_waiters) do
    if waiter ~= but then
      post_note(waiter, true, head, tail, again)
    end
  end
end

local function is_live(node, now)
  local expiry = call('ZSCORE', K_LEASES, node)
  return expiry ~= false and tonumber(expiry) >= now
end

-- The fields of a request record. A record that is no hash is garbage: it is deleted and reads
-- with a status that is none of girder's (so a claim runs it, with an empty payload that the
-- worker fails as malformed; its waiters went with it, and submit the key again when they
-- check on what they wait for).
local function read_record(key, ...)
  local record = k_record(key)
  local fields = redis.pcall('HMGET', record, ...)
  if fields.err then
    redis.call('DEL', record)
    note_corrupt(record)
    fields = {'corrupt'}
  end
  return fields
end

-- A payload or an outcome of at most CHUNKS * CHUNK_BYTES bytes is stored in chunks of
-- CHUNK_BYTES, in the fields PAYLOAD_FIELDS or OUTCOME_FIELDS (see redis_keys), so that a small
-- record stays a compact listpack. The value whose chunks are replies[first], replies[first + 1],
-- ... (an HMGET of those fields), or false when it has none.
local function joined(replies, first)
  local value = replies[first]
  if not value or not replies[first + 1] then
    return value or false
  end
  local parts = {value}
  for i = first + 1, first + CHUNKS - 1 do
    if not replies[i] then
      break
    end
    parts[#parts + 1] = replies[i]
  end
  return table.concat(parts)
end

-- Append to `args` the field-value pairs that store `value` under `field` (F_PAYLOAD or
-- F_OUTCOME), and to `unused` the chunk fields that it leaves empty (to delete if a value was
-- there before).
local function add_chunks(args, unused, field, value)
  local names, count = field == F_PAYLOAD and PAYLOAD_FIELDS or OUTCOME_FIELDS, 1
  if #value > CHUNK_BYTES and #value <= CHUNKS * CHUNK_BYTES then
    count = math.ceil(#value / CHUNK_BYTES)
  end
  if count == 1 then
    args[#args + 1] = field
    args[#args + 1] = value
  else
    for i = 1, count do
      args[#args + 1] = names[i]
      args[#args + 1] = string.sub(value, (i - 1) * CHUNK_BYTES + 1, i * CHUNK_BYTES)
    end
  end
  for i = count + 1, CHUNKS do
    unused[#unused + 1] = names[i]
  end
end

-- The set of the keys that hold blob `digest`: those whose records refer to it as long as they
-- exist, or with `until_done` ('1') those whose records refer to it only until they are done
-- (their arguments, a partial answer). See blob_sweep.lua.
local function blob_holders(digest, until_done)
  if until_done == '1' then
    return k_blob_until_done(digest)
  end
  return k_blob_holders(digest)
end

-- The kinds of member a record holds as fields `<prefix><member>` (see redis_keys).
local MEMBER_KINDS = {
  [F_WAITER] = 'waiters', [F_OWN_WAITER] = 'own_waiters', [F_ROOT] = 'roots', [F_WAITS] = 'waits',
  [F_WAITED_BY] = 'waited_by'
}

-- The members that `record` holds as fields: {waiters = nodes, own_waiters = nodes whose inbox
-- is in their own slot, roots = jobs, waits = keys it waits for, waited_by = keys waiting for
-- it, fields = the names of all those fields}.
local function record_members(record)
  local found = {waiters = {}, own_waiters = {}, roots = {}, waits = {}, waited_by = {}, fields = {}}
  for _, field in ipairs(call('HKEYS', record)) do
    local kind = MEMBER_KINDS[string.sub(field, 1, 2)]
    if kind then
      found[kind][#found[kind] + 1] = string.sub(field, 3)
      found.fields[#found.fields + 1] = field
    elseif #field == 64 then
      found.waited_by[#found.waited_by + 1] = field
      found.fields[#found.fields + 1] = field
    end
  end
  return found
end

-- The field of a key's record that says `waiter` waits for the key: the bare waiter key when it
-- has 64 characters and no member prefix (as request keys do; so that the record stays a
-- listpack), else F_WAITED_BY <waiter>.
local function waited_by_field(waiter)
  if #waiter == 64 and not MEMBER_KINDS[string.sub(waiter, 1, 2)] then
    return waiter
  end
  return F_WAITED_BY .. waiter
end

-- Push `keys` on the top of `list`, in order (the last one ends on top).
local function push_top(list, keys)
  for i = 1, #keys, BATCH do
    call('RPUSH', list, unpack(keys, i, math.min(i + BATCH - 1, #keys)))
  end
end

-- Push `keys` on the bottom of `list` so that keys[1] comes up first of them.
local function push_bottom(list, keys)
  for i = 1, #keys, BATCH do
    call('LPUSH', list, unpack(keys, i, math.min(i + BATCH - 1, #keys)))
  end
end

-- Delete `fields` of `record`, BATCH at a time.
local function hdel_all(record, fields)
  for i = 1, #fields, BATCH do
    call('HDEL', record, unpack(fields, i, math.min(i + BATCH - 1, #fields)))
  end
end

-- Leave a wake-up token for a BLPOP on `bell`; one token is enough, so never more than one.
local function ring(bell)
  if call('LLEN', bell) == 0 then
    call('RPUSH', bell, 1)
  end
end

-- Whether `key`, running under `owner`, has an owner that will complete it: one that claimed
-- it (the key is in its running set) or that is registered. A record naming any other owner
-- is garbage, or a leftover of lost writes.
local function owned(key, owner)
  return owner ~= false and (is_registered(owner) or call('SISMEMBER', k_running(owner), key) == 1)
end

-- Whether a popped key may be run: pending, or with a status nobody wrote (garbage), or running
-- under no owner that will complete it.
local function runnable(key, status, owner)
  if status == PENDING then
    return true
  end
  if status == RUNNING then
    return not owned(key, owner)
  end
  return status ~= false and status ~= DONE
end

-- Move up to `count` (at most MAX_SCRIPT_KEYS) keys from the bottom of `source`'s list to the
-- bottom of `target`'s, oldest first. Returns how many moved.
local function move_bottom(source, target, count)
  count = math.min(count, MAX_SCRIPT_KEYS)
  if count <= 0 then
    return 0
  end
  local keys = call('LPOP', k_work(source), count)
  if not keys then
    return 0
  end
  push_bottom(k_work(target), keys)
  ring(k_wake(target))
  return #keys
end

-- A work list's entry without the mark of a key that killed a worker before: in the sharded
-- layout, where a claim cannot read the record's crash count first, the reaper pushes such a
-- key as '!' .. key (request keys never start with '!'), and the list moves carry the mark.
local function unmarked(entry)
  if string.sub(entry, 1, 1) == '!' then
    return string.sub(entry, 2)
  end
  return entry
end

-- In the sharded layout, where no list move can read a record: the keys that the caller found
-- nobody can claim (key -> true). Any other key is handed out as it is, and the claim's step in
-- its record refuses it if it cannot run. nil in the one-slot layout: the records are read.
local UNCLAIMABLE = nil

-- Pop up to `share` keys that may run from the top of `work`, discarding the others.
local function pop_runnable(work, share)
  local keys = {}
  while #keys < share do
    local key = call('RPOP', work)
    if not key then
      break
    end
    local runs
    if UNCLAIMABLE then
      runs = not UNCLAIMABLE[unmarked(key)]
    else
      local state = read_record(key, F_STATUS, F_OWNER)
      runs = runnable(key, state[1], state[2])
    end
    if runs then
      keys[#keys + 1] = key
    end
  end
  return keys
end

-- Give `dist`'s work to its volunteers, oldest volunteer first: one key each, or with
-- `even_share` up to ceil(queued / volunteers) each (at most MAX_SCRIPT_KEYS), pushed so that
-- the oldest comes up first. A volunteer that is not registered (gone, or a name nobody
-- registered) is dropped from the queue and gets nothing; one whose lease ran out but is not
-- reaped yet may get work, which its reaping gives back.
-- Returns {key1, volunteer1, key2, volunteer2, ...}.
local function hand_out(dist, even_share)
  local queue, work = k_volunteers(dist), k_work(dist)
  local handed = {}
  local waiting = call('LLEN', queue)
  if waiting == 0 then
    return handed
  end
  local share = 1
  if even_share then
    share = math.min(MAX_SCRIPT_KEYS, math.ceil(call('LLEN', work) / waiting))
  end
  for _ = 1, waiting do
    local volunteer = call('LPOP', queue)
    if not volunteer then
      break
    end
    if is_registered(volunteer) then
      local keys = pop_runnable(work, share)
      if #keys == 0 then
        call('LPUSH', queue, volunteer)
        break
      end
      local reversed = {}
      for i = #keys, 1, -1 do
        reversed[#reversed + 1] = keys[i]
      end
      push_top(k_work(volunteer), reversed)
      ring(k_wake(volunteer))
      for _, key in ipairs(keys) do
        handed[#handed + 1] = unmarked(key)
        handed[#handed + 1] = volunteer
      end
    end
  end
  if #handed > 0 then
    call('HINCRBY', K_POPS, dist, #handed / 2)
  end
  return handed
end

-- Sweep step 1 of the blobs ARGV[first], ARGV[first + 1], ... (see blob_sweep.lua): of those
-- still last put or checked before `cutoff`, forget the holders that `holds(key, until_done)`
-- says no longer refer to the blob; a blob still held counts as checked now (or at `cutoff`).
-- Returns {now (server ms), the unheld digests}.
local function sweep_blobs(cutoff, first, holds)
  local now = now_ms()
  -- Forget the holders in set `holders` that no longer hold the blob; whether any is left.
  local function still_held(holders, until_done)
    local held = false
    for _, key in ipairs(call('SMEMBERS', holders)) do
      if holds(key, until_done) then
        held = true
      else
        call('SREM', holders, key)
      end
    end
    return held
  end

  local unheld = {}
  for i = first, #ARGV do
    local digest = ARGV[i]
    local score = tonumber(call('ZSCORE', K_BLOBS, digest))
    if score ~= nil and score < tonumber(cutoff) then
      local held = still_held(k_blob_holders(digest), false)
      held = still_held(k_blob_until_done(digest), true) or held
      if held then
        call('ZADD', K_BLOBS, math.max(now, tonumber(cutoff)), digest)
      else
        unheld[#unheld + 1] = digest
      end
    end
  end
  return {string.format('%.0f', now), unheld}
end

-- The start of a reap by `reaper`: nil when its own lease ran out or it is not registered (it
-- reaps nobody, see base.py); else the grid's clock moves on, the nodes that departed longer
-- than DEPARTED_MEMORY_MS ago are forgotten, and the grid time is returned (leases below it ran
-- out).
local function reaping(reaper)
  local now, grid = grid_time()
  if not is_live(reaper, grid) then
    return nil
  end
  advance_grid_time()
  local forgotten = call('ZRANGEBYSCORE', K_DEPARTED, '-inf', now - DEPARTED_MEMORY_MS)
  for _, node in ipairs(forgotten) do
    call('ZREM', K_DEPARTED, node)
    call('HDEL', K_FAREWELLS, node)
  end
  return grid
end

-- Forget `node`: its membership, volunteering, inbox, running set, journal and claim count.
-- Returns its distributor (or false) and its running keys, sorted.
local function forget_node(node)
  local info = k_node(node)
  local dist = call('HGET', info, F_DISTRIBUTOR)
  local volunteered = call('SMEMBERS', k_volunteered(node))
  local running = call('SMEMBERS', k_running(node))
  table.sort(running)

  call('ZREM', K_LEASES, node)
  call('ZADD', K_DEPARTED, now_ms(), node)
  call('DEL', info)
  if dist then
    call('SREM', k_members(dist), node)
  end
  for _, queue in ipairs(volunteered) do
    call('LREM', k_volunteers(queue), 0, node)
  end
  redis.call('DEL', k_volunteered(node), k_inbox(node), k_taken(node), k_wake(node),
    k_running(node), k_journal(node))
  call('HDEL', K_POPS, node)
  return dist, running
end

-- Give back the work of a forgotten `node` whose distributor is `dist` (or false): `requeue`
-- (keys it ran, pending again) and its list go to the bottom of its distributor's list (at
-- most MAX_SCRIPT_KEYS of the list at once: the rest stays and `trim` fetches it later), or
-- with no distributor `requeue` goes to the bottom of its own list, which stays. Returns the
-- number of keys given back.
local function give_back(node, dist, requeue)
  if not dist then
    push_bottom(k_work(node), requeue)
    return #requeue
  end
  push_bottom(k_work(dist), requeue)
  local moved = move_bottom(node, dist, MAX_SCRIPT_KEYS)
  if call('LLEN', k_work(node)) > 0 then
    call('HSET', k_orphans(dist), node, 1)
  end
  if #requeue > 0 then
    ring(k_wake(dist))
  end
  return #requeue + moved
end

-- Forget `node` and give back its work (see forget_node, give_back): each key it ran becomes
-- pending again; with `max_crashes`, its crash count rises and at the limit the key is
-- re-owned by `reaper` instead. Returns the number of keys given back and the keys that
-- crashed out.
local function hand_back(node, max_crashes, reaper)
  local dist, running = forget_node(node)
  local requeue, crashed = {}, {}
  for _, key in ipairs(running) do
    local record = k_record(key)
    local state = read_record(key, F_STATUS, F_OWNER)
    if state[1] == RUNNING and state[2] == node then
      if max_crashes and call('HINCRBY', record, F_CRASHES, 1) >= max_crashes then
        call('HSET', record, F_OWNER, reaper)
        call('SADD', k_running(reaper), key)
        crashed[#crashed + 1] = key
      else
        call('HSET', record, F_STATUS, PENDING)
        call('HDEL', record, F_OWNER)
        requeue[#requeue + 1] = key
      end
    end
  end
  return give_back(node, dist, requeue), crashed
end

-- Pop the top of node's list until a runnable key comes up, and run it: {key, payload, crashed}
-- (crashed: whether the key has killed a worker before), or nil. Keys that are done, running
-- under a known owner or have no record (or are no key at all) are discarded. With
-- `fresh_only`, a runnable key that crashed a worker before is left on top and nil returned. A
-- record without a payload is returned with an empty one: the worker fails it as malformed, so
-- whoever waits for it hears why.
local function claim(node, fresh_only)
  local work = k_work(node)
  while true do
    local key = call('RPOP', work)
    if not key then
      return nil
    end
    local found = read_record(key, F_STATUS, F_CRASHES, F_OWNER, unpack(PAYLOAD_FIELDS))
    if runnable(key, found[1], found[3]) then
      if fresh_only and found[2] then
        call('RPUSH', work, key)
        return nil
      end
      call('HSET', k_record(key), F_STATUS, RUNNING, F_OWNER, node)
      call('SADD', k_running(node), key)
      call('HINCRBY', K_POPS, node, 1)
      event('claimed', node, key)
      return {key, joined(found, 4) or '', found[2] ~= false}
    end
  end
end

-- Queue `node` at `dist`'s volunteers unless it is there already, and wake the distributor if
-- it has work to hand out. Returns 1 when queued, 0 when it was there.
local function volunteer(dist, node)
  local queue = k_volunteers(dist)
  if call('LPOS', queue, node) then
    return 0
  end
  call('RPUSH', queue, node)
  call('SADD', k_volunteered(node), dist)
  if call('LLEN', k_work(dist)) > 0 then
    ring(k_wake(dist))
  end
  return 1
end

-- Claim up to `wanted` of node's requests: {key1, payload1, key2, payload2, ...}. A key that
-- crashed a worker before is only ever claimed alone, so that the requests claimed with it never
-- share its crash count.
local function claim_many(node, wanted)
  local claimed = {}
  for _ = 1, wanted do
    local found = claim(node, #claimed > 0)
    if not found then
      break
    end
    claimed[#claimed + 1] = found[1]
    claimed[#claimed + 1] = found[2]
    if found[3] then
      break
    end
  end
  return claimed
end

-- The short id of the function named `fn` (a done record holds it, not the name: a few bytes
-- instead of a module path in every cached result), made on the name's first completion. The
-- grid's function table holds both ways: FUNCTION_NAME .. fn -> id, FUNCTION_ID .. id -> fn. A new
-- id is the first number past the table's size that no function has (garbage written into the
-- table only skips numbers).
local function_ids = {}
local function function_id(fn)
  local id = function_ids[fn] or call('HGET', K_FUNCTIONS, FUNCTION_NAME .. fn)
  if not id then
    local number = call('HLEN', K_FUNCTIONS) + 1
    while call('HEXISTS', K_FUNCTIONS, FUNCTION_ID .. number) == 1 do
      number = number + 1
    end
    id = tostring(number)
    call('HSET', K_FUNCTIONS, FUNCTION_NAME .. fn, id, FUNCTION_ID .. id, fn)
  end
  function_ids[fn] = id
  return id
end

-- The journal of a node's calls whose reply depends on what they changed. A call whose reply was
-- lost is sent again with the same token and `again` set: `replayed` then finds the first run's
-- reply (if it ran), and the script returns it instead of running again. Every
-- JOURNAL_TRIM_EVERY-th call of a node drops the entries older than `low`, the oldest token whose
-- reply the node still waits for, so a journal stays short. Token '' marks a call that is safe
-- to repeat as it is.
local JOURNAL_TRIM_EVERY = 16

local function replayed(node, token, again)
  if token == '' or again ~= '1' then
    return false, nil
  end
  local stored = call('HGET', k_journal(node), token)
  if stored then
    return true, cmsgpack.unpack(stored)
  end
  return false, nil
end

-- Drop the entries of `journal` older than token `low`.
local function trim_journal(journal, low)
  low = tonumber(low)
  for _, old in ipairs(call('HKEYS', journal)) do
    if tonumber(old) < low then
      call('HDEL', journal, old)
    end
  end
end

local function journaled(node, token, low, reply)
  if token == '' then
    return reply
  end
  local journal = k_journal(node)
  call('HSET', journal, token, cmsgpack.pack(reply))
  if tonumber(token) % JOURNAL_TRIM_EVERY == 0 then
    trim_journal(journal, low)
  end
  return reply
end
