-- blob_publish: KEYS bytes, generation, part; ARGV token. Publish the blob written in parts
-- under `part` as the bytes in one step (unless they are stored: then the parts are dropped) and
-- set the generation to `token`. Returns 1, or 0 (changing nothing) when neither the bytes nor
-- the parts exist (they expired).
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('DEL', KEYS[3])
elseif redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('RENAME', KEYS[3], KEYS[1])
  redis.call('PERSIST', KEYS[1])
else
  return 0
end
redis.call('SET', KEYS[2], ARGV[1])
return 1
