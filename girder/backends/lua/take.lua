-- take(node) -> the notifications in node's inbox, oldest first. They move to the end of
-- `taken` (see acknowledge.lua), so a reply lost on its way costs no notification.

local inbox = k_inbox(node)
local notes = call('LRANGE', inbox, 0, -1)
if #notes > 0 then
  push_top(k_taken(node), notes)
  redis.call('DEL', inbox)
end
return notes
