-- result_out(mover, key1, key2, ...) -> {key1, function1, ttl_ms1, outcome1, ...} for those of
-- the keys whose record is a cached result that may move to its key's own slot (see
-- redis_results.py): done, holding nothing but its status, function id and outcome, not about
-- to expire (ttl_ms -1: it never expires), and taken by no other move: the record is marked
-- with the token `mover` (F_MOVER), so that two processes that completed the same key (a
-- worker that woke past its lease, say) do not both move it, the second taking the vanished
-- record for a cleared one. Sent again with the same token, it answers the same.
local found = {}
for i = FIRST_KEYS, #ARGV do
  local key = ARGV[i]
  local state = read_record(key, F_STATUS, F_FUNCTION, F_MOVER, unpack(OUTCOME_FIELDS))
  local record = k_record(key)
  if state[1] == DONE and state[4] and (state[3] == false or state[3] == mover)
      and #record_members(record).fields == 0 then
    local ttl = redis.call('PTTL', record)
    if ttl == -1 or ttl > MOVE_MIN_TTL_MS then
      call('HSET', record, F_MOVER, mover)
      found[#found + 1] = key
      found[#found + 1] = state[2] or ''
      found[#found + 1] = ttl
      found[#found + 1] = joined(state, 4)
    end
  end
end
return found
