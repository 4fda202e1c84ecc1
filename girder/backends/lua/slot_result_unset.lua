-- result_unset: KEYS the moved result; ARGV the value its mover wrote. Delete it if it still
-- holds that value (a later move may have written another). Returns 1 when deleted.
if redis.pcall('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
