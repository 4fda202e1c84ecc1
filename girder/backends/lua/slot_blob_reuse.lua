-- blob_reuse: KEYS bytes, generation; ARGV token. If the bytes are stored, set the generation
-- to `token` and return 1; else return 0 (changing nothing): the writer sends the bytes.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('SET', KEYS[2], ARGV[1])
return 1
