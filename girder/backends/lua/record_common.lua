-- Helpers of the records' steps (record_<name>.lua): scripts that run in one request key's own
-- slot and touch its record alone, KEYS[1] (see redis_records.py). They come before common.lua's
-- helpers and replace its `note_corrupt` and `read_record`, which name keys of the grid's slot:
-- a record's step may touch no other slot. The rest of common.lua that they use (`call`, chunks,
-- members, edges) is the same code, and its `call` notes garbage with the `note_corrupt` here.

-- A key of the wrong type that common.lua's `call` deleted is named in the server's log; the
-- grid's `corrupt` list, in another slot, does not hear of it.
local function note_corrupt(key)
  redis.log(redis.LOG_WARNING, 'girder: deleted ' .. key .. ': it held a value of the wrong type')
end

-- The fields of the record KEYS[1] (see common.lua's read_record: a record that is no hash is
-- deleted and reads with a status that is none of girder's).
local function read_record(...)
  local fields = redis.pcall('HMGET', KEYS[1], ...)
  if fields.err then
    redis.call('DEL', KEYS[1])
    note_corrupt(KEYS[1])
    fields = {'corrupt'}
  end
  return fields
end

-- The journal of the steps whose reply depends on what they changed (a submission that made
-- the record, a completion, a cancellation, a drop): KEYS[3], a key of the record's slot named
-- by the call's token, holds the reply for STEP_JOURNAL_MS. A step sent again after its reply
-- was lost (`again` '1') returns it instead of running again, which would answer what the
-- first run left ("shared", "done already", "gone").
local function replayed_step(again)
  if again ~= '1' then
    return false, nil
  end
  local stored = redis.pcall('GET', KEYS[3]) -- garbage of another type: no entry
  if type(stored) == 'string' then
    return true, cmsgpack.unpack(stored)
  end
  return false, nil
end

local function journaled_step(reply)
  redis.call('SET', KEYS[3], cmsgpack.pack(reply), 'PX', STEP_JOURNAL_MS) -- any type replaced
  return reply
end
