-- claim(node) -> {key, payload} or nil: pop the top of node's list until a pending key comes up.
-- Anything else (done, running, no record, or a value that is no key at all) is discarded.

local node = ARGV[1]
local work = k_work(node)
while true do
  local key = redis.call('RPOP', work)
  if not key then
    return nil
  end
  if is_pending(key) then
    local record = k_record(key)
    redis.call('HSET', record, F_STATUS, RUNNING, F_OWNER, node)
    redis.call('SADD', k_running(node), key)
    redis.call('HINCRBY', K_POPS, node, 1)
    return {key, redis.call('HGET', record, F_PAYLOAD)}
  end
end
