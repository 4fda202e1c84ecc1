-- pool_claim(token, low, again, node, count, done1, done2, ...) with KEYS node's work list, its
-- running set, its journal, the claim counts (a hash, node -> keys claimed since its last trim) and
-- the slot's migration probe -> the keys popped: `done` (keys node completed, or whose claim its
-- record's step refused) dropped from node's running set, then up to `count` keys popped from the
-- top of node's list into the running set, for the records' steps to claim. A key marked as one
-- that killed a worker before ('!' before it: request keys never start with one) is popped only
-- first, and alone, so that the keys claimed with it never share its crash count; it is returned
-- without its mark. A key on the list twice (a push sent again) is popped once: one that node
-- already runs, or popped already, is dropped. Journaled: sent again after its reply was lost, it
-- returns the keys of its first run (a crash before the records' steps leaves the keys in the
-- running set, which the reaper or node's reconcile hands back).

local found, reply = replayed_in(KEYS[3], token, again)
if found then
  return reply
end
local work, running = KEYS[1], KEYS[2]
local done = {}
for i = FIRST_DONE, #ARGV do
  done[#done + 1] = ARGV[i]
end
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
  if string.sub(key, 1, 1) == '!' then
    if #popped > 0 then
      call('RPUSH', work, key)
      break
    end
    take(string.sub(key, 2))
    if #popped > 0 then
      break
    end
  else
    take(key)
  end
end
if #popped == 0 then
  return popped -- nothing changed that a resend could repeat
end
call('SADD', running, unpack(popped))
call('HINCRBY', KEYS[4], node, #popped)
return journaled_in(KEYS[3], token, low, popped)
