-- shard_reap(token, low, again, reaper, node1, npending1, pending..., ncrashed1, crashed...,
-- node2, ...) -> {dead nodes, keys requeued, keys crashed out, the dead nodes whose inbox was in
-- their own slot}: the last step of a reap in the sharded layout. Each node given whose lease
-- still ran out is forgotten (see forget_node); its `pending` keys (made pending again by the
-- caller's records' steps) and its list go back as `hand_back` gives them, and its `crashed`
-- keys (at their crash limit) join the reaper's running set: the caller hands their records
-- over to the reaper, which fails them. A node that beat again since the first step is left
-- (its keys made pending run again, and its own completions of them change nothing or come
-- first: any run's outcome is as good). Journaled. A reaper whose own lease ran out reaps
-- nobody.

local found, reply = replayed(reaper, token, again)
if found then
  return reply
end
local grid = reaping(reaper)
if not grid then
  return journaled(reaper, token, low, {{}, 0, {}, {}})
end

-- The keys ARGV[at + 1 .. at + ARGV[at]], and the position after them.
local function counted(at)
  local keys = {}
  for i = at + 1, at + tonumber(ARGV[at]) do
    keys[#keys + 1] = ARGV[i]
  end
  return keys, at + tonumber(ARGV[at]) + 1
end

local dead, requeued, crashed_out, own_inboxes = {}, 0, {}, {}
local at = FIRST_REST
while at <= #ARGV do
  local node = ARGV[at]
  local pending, crashed
  pending, at = counted(at + 1)
  crashed, at = counted(at)
  local expiry = call('ZSCORE', K_LEASES, node)
  if expiry and tonumber(expiry) < grid then
    dead[#dead + 1] = node
    if call('HGET', k_node(node), F_OWN_INBOX) == '1' then
      own_inboxes[#own_inboxes + 1] = node
    end
    local dist = forget_node(node)
    requeued = requeued + give_back(node, dist, pending)
    for _, key in ipairs(crashed) do
      call('SADD', k_running(reaper), key)
      crashed_out[#crashed_out + 1] = key
    end
    event('left', node, '', '', '', '', 'reaped')
  end
end
emit_events()
return journaled(reaper, token, low, {dead, requeued, crashed_out, own_inboxes})
