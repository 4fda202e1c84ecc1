-- events_read(start, count) -> {number, entry, entry, ...}: up to `count` entries of the event
-- list (see emit_events in common.lua) from entry number `start` on, and the number of the
-- first one returned. A `start` that was trimmed away, or that is beyond the list's end by more
-- than one (an id from before a flush), reads from the oldest entry kept; `start` just past the
-- end reads nothing. Marks the events watched (see `event` in common.lua) for EVENTS_WATCH_MS;
-- writes nothing else.
if EVENTS_MAX > 0 then
  redis.call('SET', K_EVENTS_WATCHED, '1', 'PX', EVENTS_WATCH_MS)
end
local base = tonumber(call('GET', K_EVENTS_BASE)) or 0
local length = call('LLEN', K_EVENTS)
local first = tonumber(start)
if first < base or first > base + length then
  first = base
end
local found = {}
if tonumber(count) > 0 then
  found = call('LRANGE', K_EVENTS, first - base, first - base + tonumber(count) - 1)
end
table.insert(found, 1, first)
return found
