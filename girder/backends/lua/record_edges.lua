-- record_edges(add, field1, field2, ...) -> the keys this record's key waits for, after setting
-- (add '1') or deleting (add '0') the member fields given: the other side of wait edges (F_WAITS
-- <key> in a waiting key's record; the waited-by field in a waited-for key's), which a
-- submission adds and a completion or a cancellation drops, each in the other key's slot. A
-- record that holds edges only (no status) is a waiting key with no record, and goes with its
-- last field. Safe to repeat. The reply is the next frontier of a cycle walk.

local rest = {}
for i = 2, #ARGV do
  rest[#rest + 1] = ARGV[i]
end
if #rest > 0 then
  if ARGV[1] == '1' then
    local pairs_ = {}
    for _, field in ipairs(rest) do
      pairs_[#pairs_ + 1], pairs_[#pairs_ + 2] = field, ''
    end
    call('HSET', KEYS[1], unpack(pairs_))
  else
    hdel_all(KEYS[1], rest)
  end
end
return record_members(KEYS[1]).waits
