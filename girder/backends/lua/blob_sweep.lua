-- blob_sweep(grace_ms, until_ms, limit): look at up to `limit` blobs last put or checked before
-- `until_ms` (server ms; empty: at most `grace_ms` before now). Holders without a request record
-- are forgotten; a blob left with no holder is deleted, one still held counts as checked now (or
-- at `until_ms` if that is later: a sweep that goes on with the same `until_ms` does not see it
-- again).
-- Returns {deleted, looked at, until_ms}.
local now = now_ms()
local cutoff = until_ms
if cutoff == '' then
  cutoff = string.format('%.0f', now - tonumber(grace_ms) + 1)
end
local due = call('ZRANGEBYSCORE', K_BLOBS, '-inf', '(' .. cutoff, 'LIMIT', 0, tonumber(limit))
local deleted = 0
for _, digest in ipairs(due) do
  local holders = k_blob_holders(digest)
  local held = false
  for _, key in ipairs(call('SMEMBERS', holders)) do
    if redis.call('EXISTS', k_record(key)) == 1 then
      held = true
    else
      call('SREM', holders, key)
    end
  end
  if held then
    call('ZADD', K_BLOBS, math.max(now, tonumber(cutoff)), digest)
  else
    redis.call('DEL', k_blob(digest), holders)
    call('ZREM', K_BLOBS, digest)
    deleted = deleted + 1
  end
end
return {deleted, #due, cutoff}
