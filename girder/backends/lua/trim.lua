-- trim(token, low, again, distributor, member1, member2, ...) -> keys moved (journaled). Each
-- member keeps as many keys as it claimed since the last trim (the count restarts); the rest
-- leave from the bottom, at most MAX_SCRIPT_KEYS per member. Then what departed members left
-- behind (see hand_back) comes up, at most MAX_SCRIPT_KEYS per departed member.

local found, reply = replayed(distributor, token, again)
if found then
  return reply
end
local moved = 0
for i = FIRST_MEMBERS, #ARGV do
  local member = ARGV[i]
  local keep = tonumber(call('HGET', K_POPS, member) or 0)
  call('HDEL', K_POPS, member)
  local count = move_bottom(member, distributor, call('LLEN', k_work(member)) - keep)
  if count > 0 then
    event('stolen', distributor, '', '', member, '', tostring(count))
  end
  moved = moved + count
end
local orphans = k_orphans(distributor)
for _, departed in ipairs(call('HKEYS', orphans)) do
  moved = moved + move_bottom(departed, distributor, MAX_SCRIPT_KEYS)
  if call('LLEN', k_work(departed)) == 0 then
    call('HDEL', orphans, departed)
  end
end
emit_events()
return journaled(distributor, token, low, moved)
