-- blob_put(digest, data, holder, until_done): store `data` as blob `digest` unless one is stored
-- (its bytes are never overwritten), add `holder` to its holders (see blob_holders) and start its
-- grace period again.
redis.call('SET', k_blob(digest), data, 'NX')
call('SADD', blob_holders(digest, until_done), holder)
call('ZADD', K_BLOBS, now_ms(), digest)
return 1
