-- complete(node, key, outcome, cache, claim_next): store or forget the outcome, drop the key's
-- wait edges (both ways), and post a notification to every waiter but `node`. A done key stays
-- as it is. With claim_next, then claim node's next request (one round trip for both).

local node, key, outcome, cache = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1'
local claim_next = ARGV[5] == '1'

local function complete()
  redis.call('SREM', k_running(node), key)
  local record = k_record(key)
  local status = redis.call('HGET', record, F_STATUS)
  if status == DONE then
    return 0
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
    return 0
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
  return 1
end

local completed = complete()
if claim_next then
  return claim(node)
end
return completed
