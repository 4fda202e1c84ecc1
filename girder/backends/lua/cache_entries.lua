-- cache_entries(key1, key2, ...) -> {key1, function1, bytes1, ...} for those of the keys that
-- are done (cached), with the bytes of their outcome (a done record keeps no payload). Reads
-- only.

local later = {} -- the chunk fields after the first (at most CHUNK_BYTES each)
for i = 2, CHUNKS do
  later[#later + 1] = OUTCOME_FIELDS[i]
end

-- The name of the function whose id (in the grid's function table, see complete.lua) a done
-- record holds; an id the table lacks (garbage written into a record) stands for itself.
local names = {}
local function function_name(fn)
  if names[fn] == nil then
    names[fn] = call('HGET', K_FUNCTIONS, FUNCTION_ID .. fn) or fn
  end
  return names[fn]
end

local found = {}
for i = FIRST_KEYS, #ARGV do
  local key = ARGV[i]
  local record = k_record(key)
  local state = read_record(key, F_STATUS, F_FUNCTION)
  if state[1] == DONE then
    local bytes = call('HSTRLEN', record, F_OUTCOME)
    for _, chunk in ipairs(call('HMGET', record, unpack(later))) do
      if chunk then
        bytes = bytes + #chunk
      end
    end
    found[#found + 1] = key
    found[#found + 1] = function_name(state[2] or '')
    found[#found + 1] = bytes
  end
end
return found
