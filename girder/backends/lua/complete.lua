-- complete(node, claim, volunteer_at, key1, outcome1, cache1, key2, ...): for each key in order,
-- store or forget its outcome, drop its wait edges (both ways), and post a notification to every
-- waiter but `node` (a done key stays as it is). Then claim up to `claim` of node's requests;
-- when none came and volunteer_at is not empty, volunteer node there.
-- Returns {key1, payload1, key2, payload2, ...} for the claimed requests.

local node, wanted, volunteer_at = ARGV[1], tonumber(ARGV[2]), ARGV[3]

local function complete(key, outcome, cache)
  redis.call('SREM', k_running(node), key)
  local record = k_record(key)
  local status = redis.call('HGET', record, F_STATUS)
  if status == DONE then
    return
  end
  local waits, waited_by = k_waits(key), k_waited_by(key)
  for _, after in ipairs(redis.call('SMEMBERS', waits)) do
    redis.call('SREM', k_waited_by(after), key)
  end
  for _, before in ipairs(redis.call('SMEMBERS', waited_by)) do
    redis.call('SREM', k_waits(before), key)
  end
  redis.call('DEL', waits, waited_by)
  if not status then
    return
  end

  if cache then
    redis.call('HSET', record, F_STATUS, DONE, F_OUTCOME, outcome)
    redis.call('HDEL', record, F_OWNER, F_CRASHES)
    redis.call('INCR', K_CACHED)
  else
    redis.call('DEL', record)
  end
  local waiters = k_waiters(key)
  local note = #key .. ':' .. key .. outcome
  for _, waiter in ipairs(redis.call('SMEMBERS', waiters)) do
    if waiter ~= node then
      redis.call('RPUSH', k_inbox(waiter), note)
    end
  end
  redis.call('DEL', waiters)
end

for i = 4, #ARGV, 3 do
  complete(ARGV[i], ARGV[i + 1], ARGV[i + 2] == '1')
end

local claimed = claim_many(node, wanted)
if wanted > 0 and #claimed == 0 and volunteer_at ~= '' then
  volunteer(volunteer_at, node)
end
return claimed
