-- result_drop(token, low, again, node, mover, key1, sha1, key2, sha2, ...) -> the keys whose
-- copy in their own slot must go: each key's record is deleted if it is still the cached
-- result that `complete` marked for the move `mover` and reported (done, marked so, holding
-- nothing else, its outcome's SHA-1 `sha`); a key whose record is gone or is no longer that
-- result (cleared, expired, run again) is returned, so that the copy does not outlive it. A
-- record that is that result but holds something more stays, and so does its copy (the same
-- outcome in two places). Journaled under the node that completed the keys (its journal goes
-- when it leaves or is reaped): sent again after its reply was lost, it must not take the
-- record it deleted for one that went.

local found, reply = replayed(node, token, again)
if found then
  return reply
end
local stale, dropped = {}, false
for i = FIRST_MOVED, #ARGV, 2 do
  local key, sha = ARGV[i], ARGV[i + 1]
  local state = read_record(key, F_STATUS, F_MOVER, unpack(OUTCOME_FIELDS))
  local outcome = state[1] == DONE and state[2] == mover and joined(state, 3)
  if not outcome or redis.sha1hex(outcome) ~= sha then
    stale[#stale + 1] = key
  elseif #record_members(k_record(key)).fields == 0 then
    redis.call('DEL', k_record(key))
    dropped = true
  end
end
if dropped then
  redis.call('SET', K_RESULTS_DROPPED, now_ms()) -- see submit.lua: a stale look looks again
end
return journaled(node, token, low, stale)
