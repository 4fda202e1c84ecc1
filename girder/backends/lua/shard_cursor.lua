-- shard_cursor(token, low, again, node, job, done, entry1, ...) -> the entries left: a step of
-- the cursor of a cancellation in the sharded layout (the list `cancelling:<job>`, see
-- ShardedRedisBackend.cancel): the `done` entries at its head, which node looked at, leave it,
-- and the new entries join its tail. Journaled (sent twice, it would drop entries nobody read).

local found, reply = replayed(node, token, again)
if found then
  return reply
end
local cursor = k_cancelling(job)
local entries = {}
for i = FIRST_ENTRIES, #ARGV do
  entries[#entries + 1] = ARGV[i]
end
if tonumber(done) > 0 then
  call('LTRIM', cursor, tonumber(done), -1)
end
for i = 1, #entries, BATCH do
  call('RPUSH', cursor, unpack(entries, i, math.min(i + BATCH - 1, #entries)))
end
return journaled(node, token, low, call('LLEN', cursor))
