-- blob_store: KEYS bytes, generation; ARGV data, token. Store the bytes unless stored (they are
-- never overwritten) and set the generation to `token`. Returns 1.
redis.call('SET', KEYS[1], ARGV[1], 'NX')
redis.call('SET', KEYS[2], ARGV[2])
return 1
