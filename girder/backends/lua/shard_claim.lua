-- shard_claim(token, low, again, node, count, volunteer_at, ndone, ntold, done1, ..., told1, ...,
-- event1, ...) -> {the keys popped, the nodes of `told` that departed}: the step of a claim or
-- completion in the grid's slot (the sharded layout). The `ndone` keys `done` (node completed
-- them, or its claim's records' steps refused them) leave node's running set; then up to
-- `count` keys are popped from the top of node's work list into it, for the records' steps to
-- claim (counted in node's pops, see `trim`). A key marked as one that killed a worker before
-- ('!' before it) is popped only first and alone, so that the keys claimed with it never share
-- its crash count, and comes without its mark. A key on the list twice (a push sent again) is
-- popped once: one node already runs is dropped. When `count` > 0 and nothing was popped, node
-- volunteers at `volunteer_at` (unless ''). `told`: the waiters of the keys completed, which
-- the caller tells after this step, but those that left (a departed node gets nothing). The
-- events the caller made of the records' steps are published with it. Journaled: sent again
-- after its reply was lost, it returns its first run's reply (a node that dies before the
-- records' steps leaves the keys in its running set, which its reaper hands back).

local found, reply = replayed(node, token, again)
if found then
  return reply
end
local running, work = k_running(node), k_work(node)
local done, departed = {}, {}
local first_told = FIRST_REST + tonumber(ndone)
local first_event = first_told + tonumber(ntold)
for i = FIRST_REST, first_told - 1 do
  done[#done + 1] = ARGV[i]
end
for i = first_told, first_event - 1 do
  if has_departed(ARGV[i]) then
    departed[#departed + 1] = ARGV[i]
  end
end
given_events(first_event)
for i = 1, #done, BATCH do
  call('SREM', running, unpack(done, i, math.min(i + BATCH - 1, #done)))
end
local popped, seen = {}, {}
local function take(key)
  if not seen[key] and call('SISMEMBER', running, key) == 0 then
    seen[key] = true
    popped[#popped + 1] = key
  end
end
while #popped < tonumber(count) do
  local key = call('RPOP', work)
  if not key then
    break
  end
  if unmarked(key) ~= key then
    if #popped > 0 then
      call('RPUSH', work, key)
      break
    end
    take(unmarked(key))
    if #popped > 0 then
      break
    end
  else
    take(key)
  end
end
if #popped > 0 then
  call('SADD', running, unpack(popped))
  call('HINCRBY', K_POPS, node, #popped)
elseif tonumber(count) > 0 and volunteer_at ~= '' then
  volunteer(volunteer_at, node)
end
emit_events()
return journaled(node, token, low, {popped, departed})
