-- Helpers of the pools' steps that come after common.lua's (they use its journal's trimming).

-- The journal of the steps whose reply depends on what they changed (see common.lua's
-- `replayed` and `journaled`), kept in the hash `journal` that the step got in KEYS.
local function replayed_in(journal, token, again)
  if token == '' or again ~= '1' then
    return false, nil
  end
  local stored = call('HGET', journal, token)
  if stored then
    return true, cmsgpack.unpack(stored)
  end
  return false, nil
end

local function journaled_in(journal, token, low, reply)
  if token == '' then
    return reply
  end
  call('HSET', journal, token, cmsgpack.pack(reply))
  if tonumber(token) % JOURNAL_TRIM_EVERY == 0 then
    trim_journal(journal, low)
  end
  return reply
end
