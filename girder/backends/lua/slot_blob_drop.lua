-- blob_drop: KEYS bytes, generation; ARGV generation read before the sweep found the blob
-- unheld ('' for none). Delete the bytes and the generation if it is still that one (no put
-- wrote or reused the bytes since). Returns 1 when the bytes are gone, 0 when they stay.
local generation = redis.pcall('GET', KEYS[2])
if type(generation) ~= 'string' then  -- none (false), or garbage of another type
  generation = ''
end
if generation == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
end
return 1 - redis.call('EXISTS', KEYS[1])
