-- submit(node, into, on_top, has_waiter, waiter_key, dispatch, claim, key1, payload1, key2, ...)
-- -> {results, claimed}: per request, {1, outcome} when done, {2, cycle...} when a wait edge
-- closed a cycle, else {0}; then up to `claim` requests claimed for node, {key1, payload1, ...}.

local node, into = ARGV[1], ARGV[2]
local on_top, has_waiter, waiter = ARGV[3] == '1', ARGV[4] == '1', ARGV[5]
local dispatch, wanted = ARGV[6] == '1', tonumber(ARGV[7])

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
      for _, after in ipairs(redis.call('SMEMBERS', k_waits(key))) do
        if not parent[after] then
          parent[after] = key
          if after == target then
            local reversed = {after}
            while reversed[#reversed] ~= start do
              reversed[#reversed + 1] = parent[reversed[#reversed]]
            end
            local found = {}
            for i = #reversed, 1, -1 do
              found[#found + 1] = reversed[i]
            end
            return found
          end
          next_frontier[#next_frontier + 1] = after
        end
      end
    end
    frontier = next_frontier
  end
  return nil
end

local results, pushed = {}, {}
for i = 8, #ARGV, 2 do
  local key = ARGV[i]
  local record = k_record(key)
  local state = redis.call('HMGET', record, F_STATUS, F_OUTCOME)
  if state[1] == DONE then
    results[#results + 1] = {1, state[2]}
  else
    if not state[1] then
      redis.call('HSET', record, F_STATUS, PENDING, F_PAYLOAD, ARGV[i + 1])
    end
    redis.call('SADD', k_waiters(key), node)
    if state[1] ~= RUNNING then
      pushed[#pushed + 1] = key
    end
    local result = {0}
    if has_waiter then
      redis.call('SADD', k_waits(waiter), key)
      redis.call('SADD', k_waited_by(key), waiter)
      local found = path(key, waiter)
      if found then
        result = {2, waiter}
        for _, step in ipairs(found) do
          result[#result + 1] = step
        end
      end
    end
    results[#results + 1] = result
  end
end

if #pushed > 0 then
  if on_top then
    push_top(k_work(into), pushed)
  else
    push_bottom(k_work(into), pushed)
  end
end
if dispatch then
  hand_out(into, true)
end
if #pushed > 0 and (not dispatch or redis.call('LLEN', k_work(into)) > 0) then
  ring(k_wake(into))
end
return {results, claim_many(node, wanted)}
