-- cache_drop(token, low, again, node, fn_name, every, key1, key2, ...) -> the keys whose cached
-- results were deleted: those of the keys that are done and, unless every is '1', were computed
-- by the function named fn_name. Pending and running records stay. Journaled (under the
-- one-off node name of one `cache_clear`, whose journal expires after CLEAR_JOURNAL_MS: it is
-- fine to lose), so that a call sent again after its reply was lost answers what the first
-- one deleted.

local found, reply = replayed(node, token, again)
if found then
  return reply
end
-- A done record names its function by its id in the grid's function table (see complete.lua).
local fn_id = call('HGET', K_FUNCTIONS, FUNCTION_NAME .. fn_name)
local dropped = {}
for i = FIRST_KEYS, #ARGV do
  local key = ARGV[i]
  local state = read_record(key, F_STATUS, F_FUNCTION)
  if state[1] == DONE and (every == '1' or (fn_id and state[2] == fn_id)) then
    redis.call('DEL', k_record(key))
    dropped[#dropped + 1] = key
  end
end
journaled(node, token, low, dropped)
redis.call('PEXPIRE', k_journal(node), CLEAR_JOURNAL_MS)
return dropped
