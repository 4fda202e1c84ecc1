-- blob_sweep(grace_ms, until_ms, limit): look at up to `limit` blobs last put or checked before
-- `until_ms` (server ms; empty: at most `grace_ms` before now). Holders whose records no longer
-- refer to the blob are forgotten: those without a request record, and those that held it only
-- until done (see blob_holders) whose record is done or has no status (edges only). A blob left
-- with no holder is deleted, one still held counts as checked now (or at `until_ms` if that is
-- later: a sweep that goes on with the same `until_ms` does not see it again).
-- Returns {deleted, looked at, until_ms}.
local now = now_ms()
local cutoff = until_ms
if cutoff == '' then
  cutoff = string.format('%.0f', now - tonumber(grace_ms) + 1)
end

-- Whether request `key` still refers to the blob: its record exists or, until done, is pending
-- or running (or of a status nobody wrote: it may still run).
local function holds(key, until_done)
  if not until_done then
    return redis.call('EXISTS', k_record(key)) == 1
  end
  local status = read_record(key, F_STATUS)[1]
  return status ~= false and status ~= DONE
end

-- Forget the holders in set `holders` that no longer hold the blob; whether any is left.
local function still_held(holders, until_done)
  local held = false
  for _, key in ipairs(call('SMEMBERS', holders)) do
    if holds(key, until_done) then
      held = true
    else
      call('SREM', holders, key)
    end
  end
  return held
end

local due = call('ZRANGEBYSCORE', K_BLOBS, '-inf', '(' .. cutoff, 'LIMIT', 0, tonumber(limit))
local deleted = 0
for _, digest in ipairs(due) do
  local holders, until_done = k_blob_holders(digest), k_blob_until_done(digest)
  local held = still_held(holders, false)
  held = still_held(until_done, true) or held
  if held then
    call('ZADD', K_BLOBS, math.max(now, tonumber(cutoff)), digest)
  else
    redis.call('DEL', k_blob(digest), holders, until_done)
    call('ZREM', K_BLOBS, digest)
    deleted = deleted + 1
  end
end
return {deleted, #due, cutoff}
