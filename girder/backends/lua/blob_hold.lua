-- blob_hold(digest, holder, until_done): the grid's half of a put of blob `digest` (its bytes
-- live in a slot of their own: see RedisBackend.put_blob). Add `holder` to its holders (see
-- blob_holders) and start its grace period again; before the bytes are written or reused, so
-- that a sweep that finds the blob unheld before this ran sees the bytes' generation change.
-- Returns 1 when the digest was not in the index (its bytes are most likely not stored), else 0.
call('SADD', blob_holders(digest, until_done), holder)
return call('ZADD', K_BLOBS, now_ms(), digest)
