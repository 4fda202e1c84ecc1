-- blob_sweep(cutoff, digests...): of the digests given, those still last put or checked before
-- `cutoff` (server ms) whose holders all let go of them. Holders whose records no longer refer to
-- the blob are forgotten: those without a request record, and those that held it only until done
-- (see blob_holders) whose record is done or has no status (edges only). A blob still held counts
-- as checked now (or at `cutoff` if that is later: a sweep that goes on with the same `cutoff`
-- does not see it again). The unheld stay in the index: their bytes, in slots of their own, go
-- first (blob_drop), then blob_forget drops them from the index if nothing held them again.
-- Returns {now (server ms), the unheld digests}.
-- (The sweep itself is common.lua's `sweep_blobs`, which a sharded grid's `shard_blob_sweep`
-- shares.)

-- Whether request `key` still refers to the blob: its record exists or, until done, is pending
-- or running (or of a status nobody wrote: it may still run).
local function holds(key, until_done)
  if not until_done then
    return redis.call('EXISTS', k_record(key)) == 1
  end
  local status = read_record(key, F_STATUS)[1]
  return status ~= false and status ~= DONE
end

return sweep_blobs(cutoff, FIRST_DIGESTS, holds)
