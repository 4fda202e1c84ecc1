-- Helpers of the records' steps (record_<name>.lua): scripts that run in one request key's own
-- slot and touch its record alone, KEYS[1] (see redis_records.py). They come before common.lua's
-- helpers and replace its `call`, `note_corrupt` and `read_record`, which name keys of the
-- grid's slot: a record's step may touch no other slot. The rest of common.lua that they use
-- (chunks, members, edges) is the same code.

-- A key of the wrong type is deleted (as common.lua's `call` does) and named in the server's
-- log; the grid's `corrupt` list, in another slot, does not hear of it.
local function note_corrupt(key)
  redis.log(redis.LOG_WARNING, 'girder: deleted ' .. key .. ': it held a value of the wrong type')
end

local function call(command, key, ...)
  local reply = redis.pcall(command, key, ...)
  if type(reply) == 'table' and reply.err then
    if string.sub(reply.err, 1, 9) ~= 'WRONGTYPE' then
      error(reply)
    end
    redis.call('DEL', key)
    note_corrupt(key)
    return redis.call(command, key, ...)
  end
  return reply
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
  local stored = call('GET', KEYS[3])
  if stored then
    return true, cmsgpack.unpack(stored)
  end
  return false, nil
end

local function journaled_step(reply)
  call('SET', KEYS[3], cmsgpack.pack(reply), 'PX', STEP_JOURNAL_MS)
  return reply
end
