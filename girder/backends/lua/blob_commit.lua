-- blob_commit(digest, nonce, holder, until_done): publish the blob written in parts under
-- k_blob_part(digest .. ':' .. nonce) as blob `digest` in one step (unless one is stored: then
-- the parts are dropped), add `holder` to its holders (see blob_holders) and start its grace
-- period again.
-- Returns 1, or 0 (changing nothing) when neither the blob nor the parts exist (they expired).
local blob, part = k_blob(digest), k_blob_part(digest .. ':' .. nonce)
if redis.call('EXISTS', blob) == 1 then
  redis.call('DEL', part)
elseif redis.call('EXISTS', part) == 1 then
  redis.call('RENAME', part, blob)
  redis.call('PERSIST', blob)
else
  return 0
end
call('SADD', blob_holders(digest, until_done), holder)
call('ZADD', K_BLOBS, now_ms(), digest)
return 1
