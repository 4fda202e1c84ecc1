-- cache_entries(key1, key2, ...) -> {key1, function1, bytes1, ...} for those of the keys that
-- are done (cached), with the bytes of their outcome and payload. Reads only.

local found = {}
for i = FIRST_KEYS, #ARGV do
  local key = ARGV[i]
  local record = k_record(key)
  local state = read_record(key, F_STATUS, F_FUNCTION)
  if state[1] == DONE then
    found[#found + 1] = key
    found[#found + 1] = state[2] or ''
    found[#found + 1] = call('HSTRLEN', record, F_OUTCOME) + call('HSTRLEN', record, F_PAYLOAD)
  end
end
return found
