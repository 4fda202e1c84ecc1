-- inbox_post: KEYS a node's own inbox, its `posted` hash and its slot's migration probe (see
-- redis_inboxes.py); ARGV ttl_ms, token, then the notifications. Append them to the inbox,
-- unless `posted` holds the call's token (the call was sent again after its reply was lost:
-- the first one posted them). Both expire ttl_ms later (unless posted to, or put back, again).
-- `posted` holds the tokens of the calls since it was last emptied, which it is when it holds
-- POSTED_MAX: a call sent again across that posts twice (which a waiter ignores: see
-- redis_inboxes.py). Garbage of another type in either is deleted. Returns 1 when it posted,
-- 0 when the token was there.
local inbox, posted, ttl_ms, token = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local POSTED_MAX = 128

-- redis.call(command, key, ...), deleting the key first if it holds another type.
local function repaired(command, key, ...)
  local reply = redis.pcall(command, key, ...)
  if type(reply) == 'table' and reply.err then
    redis.call('DEL', key)
    return redis.call(command, key, ...)
  end
  return reply
end

if repaired('HEXISTS', posted, token) == 1 then
  return 0
end
if redis.call('HLEN', posted) >= POSTED_MAX then
  redis.call('DEL', posted)
end
redis.call('HSET', posted, token, '')
redis.call('PEXPIRE', posted, ttl_ms)
for i = 3, #ARGV, 1000 do
  repaired('RPUSH', inbox, unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('PEXPIRE', inbox, ttl_ms)
return 1
