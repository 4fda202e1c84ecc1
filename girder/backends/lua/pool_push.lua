-- pool_push(on_top, key1, key2, ...) with KEYS a work list, its wake list and the list's slot's
-- migration probe -> the list's length: the keys pushed on the top of the list (on_top '1', the
-- last one ending on top) or on its bottom (the first coming up first of them), and the wake
-- list rung. The step of a submission after its records' steps made or found the keys pending,
-- and of a reap's or reconcile's after theirs made them pending again. Sent twice, it pushes
-- the keys twice: a claim's record step takes each once, and refuses the other entry.

local keys = {}
for i = FIRST_KEYS, #ARGV do
  keys[#keys + 1] = ARGV[i]
end
if on_top == '1' then
  push_top(KEYS[1], keys)
else
  push_bottom(KEYS[1], keys)
end
if #keys > 0 then
  ring(KEYS[2])
end
return call('LLEN', KEYS[1])
