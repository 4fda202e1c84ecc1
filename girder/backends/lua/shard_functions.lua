-- shard_functions(name1, name2, ...) -> {id1, id2, ...}: the short id of each function name in
-- the grid's function table, made on a name's first use (see common.lua's function_id): in
-- the sharded layout a completion's record step keeps the id, which the caller looks up first.

local ids = {}
for i = 1, #ARGV do
  ids[#ids + 1] = function_id(ARGV[i])
end
return ids
