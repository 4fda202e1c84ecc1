-- blob_forget(cutoff, deadline, digests...): the last step of a sweep, for digests whose bytes
-- are gone (blob_drop): drop each from the index and delete its holder sets, unless a put held it
-- again since blob_sweep found it unheld (it has a holder, or was put at or after `cutoff`): then
-- its bytes are being written again, and it stays. Past `deadline` (server ms), it does nothing:
-- what blob_sweep decided is too old (see RedisBlobs); the next sweep decides again.
-- Returns how many it dropped.
if now_ms() > tonumber(deadline) then
  return 0
end
local dropped = 0
for i = FIRST_DIGESTS, #ARGV do
  local digest = ARGV[i]
  local holders, until_done = k_blob_holders(digest), k_blob_until_done(digest)
  local score = tonumber(call('ZSCORE', K_BLOBS, digest))
  if score ~= nil and score < tonumber(cutoff)
      and call('SCARD', holders) == 0 and call('SCARD', until_done) == 0 then
    redis.call('DEL', holders, until_done)
    call('ZREM', K_BLOBS, digest)
    dropped = dropped + 1
  end
end
return dropped
