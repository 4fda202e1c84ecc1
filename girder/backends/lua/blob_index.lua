-- blob_index(digests...): index each digest the index does not name, as if put now (its grace
-- period starts): blob bytes whose index entry was lost (a failover of the grid's primary lost
-- the entry while the bytes, on another primary, stayed). A later sweep deletes them unless a
-- record holds them. Returns how many were indexed.
local now = now_ms()
local added = 0
for i = FIRST_DIGESTS, #ARGV do
  added = added + call('ZADD', K_BLOBS, 'NX', now, ARGV[i])
end
return added
