-- blob_sweep(cutoff, digests...): of the digests given, those still last put or checked before
-- `cutoff` (server ms) whose holders all let go of them. Holders whose records no longer refer to
-- the blob are forgotten: those without a request record, and those that held it only until done
-- (see blob_holders) whose record is done or has no status (edges only). A blob still held counts
-- as checked now (or at `cutoff` if that is later: a sweep that goes on with the same `cutoff`
-- does not see it again). The unheld stay in the index: their bytes, in slots of their own, go
-- first (blob_drop), then blob_forget drops them from the index if nothing held them again.
-- Returns {now (server ms), the unheld digests}.
local now = now_ms()

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

local unheld = {}
for i = FIRST_DIGESTS, #ARGV do
  local digest = ARGV[i]
  local score = tonumber(call('ZSCORE', K_BLOBS, digest))
  if score ~= nil and score < tonumber(cutoff) then
    local held = still_held(k_blob_holders(digest), false)
    held = still_held(k_blob_until_done(digest), true) or held
    if held then
      call('ZADD', K_BLOBS, math.max(now, tonumber(cutoff)), digest)
    else
      unheld[#unheld + 1] = digest
    end
  end
end
return {string.format('%.0f', now), unheld}
