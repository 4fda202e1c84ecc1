-- shard_blob_sweep(cutoff, nreferring, referring1, ..., digests...) -> {now (server ms), the
-- unheld digests}: `blob_sweep` in the sharded layout, where the holders' records are in their
-- own slots: the caller read them first, and `referring` names the holders that still refer to
-- the blobs, each as 'h' .. key (its record exists) or 'u' .. key (its record is pending or
-- running: it holds a blob until done). A record made after that read belongs to a put made
-- after it too (a put comes before its record), which started the blob's grace again.

local referring, first_digest = {}, FIRST_REST + tonumber(nreferring)
for i = FIRST_REST, first_digest - 1 do
  referring[ARGV[i]] = true
end

local function holds(key, until_done)
  return referring[(until_done and 'u' or 'h') .. key] == true
end

return sweep_blobs(cutoff, first_digest, holds)
