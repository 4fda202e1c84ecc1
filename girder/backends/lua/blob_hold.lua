-- blob_hold(digest, holder, until_done): if blob `digest` is stored, add `holder` to its holders
-- (see blob_holders) and start its grace period again; returns 1. Returns 0 (changing nothing)
-- when it is not stored.
if redis.call('EXISTS', k_blob(digest)) == 0 then
  return 0
end
call('SADD', blob_holders(digest, until_done), holder)
call('ZADD', K_BLOBS, now_ms(), digest)
return 1
