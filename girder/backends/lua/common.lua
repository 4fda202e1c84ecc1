-- Helpers shared by every script. The key names (k_record, k_work, K_LEASES, F_STATUS, ...)
-- are defined just above this, by girder/backends/redis_keys.py.

-- Keys per LPUSH/RPUSH: Lua's unpack() handles only a few thousand values at once.
local BATCH = 1000

-- Redis server time in milliseconds: leases never depend on the clients' clocks.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Push `keys` on the top of `list`, in order (the last one ends on top).
local function push_top(list, keys)
  for i = 1, #keys, BATCH do
    redis.call('RPUSH', list, unpack(keys, i, math.min(i + BATCH - 1, #keys)))
  end
end

-- Push `keys` on the bottom of `list` so that keys[1] comes up first of them.
local function push_bottom(list, keys)
  for i = 1, #keys, BATCH do
    redis.call('LPUSH', list, unpack(keys, i, math.min(i + BATCH - 1, #keys)))
  end
end

-- Leave a wake-up token for a BLPOP on `bell`; one token is enough, so never more than one.
local function ring(bell)
  if redis.call('LLEN', bell) == 0 then
    redis.call('RPUSH', bell, 1)
  end
end

local function is_pending(key)
  return redis.call('HGET', k_record(key), F_STATUS) == PENDING
end

-- Move up to `count` keys from the bottom of `source`'s list to the bottom of `target`'s,
-- oldest first. Returns how many moved.
local function move_bottom(source, target, count)
  if count <= 0 then
    return 0
  end
  local keys = redis.call('LPOP', k_work(source), count)
  if not keys then
    return 0
  end
  push_bottom(k_work(target), keys)
  ring(k_wake(target))
  return #keys
end

-- Give `dist`'s pending work to its volunteers, oldest volunteer first: one key each, or with
-- `even_share` up to ceil(queued / volunteers) each, pushed so that the oldest comes up first.
-- Returns {key1, volunteer1, key2, volunteer2, ...}.
local function hand_out(dist, even_share)
  local queue, work = k_volunteers(dist), k_work(dist)
  local waiting = redis.call('LLEN', queue)
  if waiting == 0 then
    return {}
  end
  local share = 1
  if even_share then
    share = math.ceil(redis.call('LLEN', work) / waiting)
  end
  local handed = {}
  for _ = 1, waiting do
    local keys = {}
    while #keys < share do
      local key = redis.call('RPOP', work)
      if not key then
        break
      end
      if is_pending(key) then
        keys[#keys + 1] = key
      end
    end
    if #keys == 0 then
      break
    end
    local volunteer = redis.call('LPOP', queue)
    local reversed = {}
    for i = #keys, 1, -1 do
      reversed[#reversed + 1] = keys[i]
    end
    push_top(k_work(volunteer), reversed)
    ring(k_wake(volunteer))
    for _, key in ipairs(keys) do
      handed[#handed + 1] = key
      handed[#handed + 1] = volunteer
    end
  end
  if #handed > 0 then
    redis.call('HINCRBY', K_POPS, dist, #handed / 2)
  end
  return handed
end

-- Forget `node` (membership, volunteering, inbox, claim count) and give back its work: its list
-- and running keys go to the bottom of its distributor's list, or with no distributor the
-- running keys go to the bottom of its own list, which stays. With `max_crashes`, each running
-- key's crash count rises and at the limit the key is re-owned by `reaper` instead.
-- Returns the number of keys given back and the keys that crashed out.
local function hand_back(node, max_crashes, reaper)
  local info = k_node(node)
  local dist = redis.call('HGET', info, F_DISTRIBUTOR)
  redis.call('ZREM', K_LEASES, node)
  redis.call('DEL', info)
  if dist then
    redis.call('SREM', k_members(dist), node)
  end
  for _, queue in ipairs(redis.call('SMEMBERS', k_volunteered(node))) do
    redis.call('LREM', k_volunteers(queue), 0, node)
  end
  redis.call('DEL', k_volunteered(node), k_inbox(node), k_taken(node), k_wake(node))
  redis.call('HDEL', K_POPS, node)

  local running = redis.call('SMEMBERS', k_running(node))
  redis.call('DEL', k_running(node))
  table.sort(running)
  local requeue, crashed = {}, {}
  for _, key in ipairs(running) do
    local record = k_record(key)
    local state = redis.call('HMGET', record, F_STATUS, F_OWNER)
    if state[1] == RUNNING and state[2] == node then
      if max_crashes and redis.call('HINCRBY', record, F_CRASHES, 1) >= max_crashes then
        redis.call('HSET', record, F_OWNER, reaper)
        redis.call('SADD', k_running(reaper), key)
        crashed[#crashed + 1] = key
      else
        redis.call('HSET', record, F_STATUS, PENDING)
        redis.call('HDEL', record, F_OWNER)
        requeue[#requeue + 1] = key
      end
    end
  end

  if not dist then
    push_bottom(k_work(node), requeue)
    return #requeue, crashed
  end
  local work = k_work(node)
  local leftover = redis.call('LRANGE', work, 0, -1)
  redis.call('DEL', work)
  push_bottom(k_work(dist), requeue)
  push_bottom(k_work(dist), leftover)
  if #requeue + #leftover > 0 then
    ring(k_wake(dist))
  end
  return #requeue + #leftover, crashed
end

-- Pop the top of node's list until a pending key comes up, and run it: {key, payload, crashed}
-- (crashed: whether the key has killed a worker before), or nil. Anything else (done, running, no
-- record, or a value that is no key at all) is discarded. With `fresh_only`, a pending key that
-- crashed a worker before is left on top and nil returned.
local function claim(node, fresh_only)
  local work = k_work(node)
  while true do
    local key = redis.call('RPOP', work)
    if not key then
      return nil
    end
    local record = k_record(key)
    local found = redis.call('HMGET', record, F_STATUS, F_PAYLOAD, F_CRASHES)
    if found[1] == PENDING then
      if fresh_only and found[3] then
        redis.call('RPUSH', work, key)
        return nil
      end
      redis.call('HSET', record, F_STATUS, RUNNING, F_OWNER, node)
      redis.call('SADD', k_running(node), key)
      redis.call('HINCRBY', K_POPS, node, 1)
      return {key, found[2], found[3] ~= false}
    end
  end
end

-- Queue `node` at `dist`'s volunteers unless it is there already, and wake the distributor if
-- it has work to hand out. Returns 1 when queued, 0 when it was there.
local function volunteer(dist, node)
  local queue = k_volunteers(dist)
  if redis.call('LPOS', queue, node) then
    return 0
  end
  redis.call('RPUSH', queue, node)
  redis.call('SADD', k_volunteered(node), dist)
  if redis.call('LLEN', k_work(dist)) > 0 then
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
