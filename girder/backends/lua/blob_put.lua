-- blob_put(digest, data, holder): store `data` as blob `digest` unless one is stored (its bytes
-- are never overwritten), add `holder` to its holders and start its grace period again.
redis.call('SET', k_blob(digest), data, 'NX')
call('SADD', k_blob_holders(digest), holder)
call('ZADD', K_BLOBS, now_ms(), digest)
return 1
