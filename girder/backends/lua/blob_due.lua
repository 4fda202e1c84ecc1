-- blob_due(grace_ms, until_ms, limit): the first step of a sweep (see RedisBackend.sweep_blobs):
-- up to `limit` digests last put or checked before `until_ms` (server ms; empty: at most
-- `grace_ms` before now). Returns {until_ms, digests}.
local cutoff = until_ms
if cutoff == '' then
  cutoff = string.format('%.0f', now_ms() - tonumber(grace_ms) + 1)
end
return {cutoff, call('ZRANGEBYSCORE', K_BLOBS, '-inf', '(' .. cutoff, 'LIMIT', 0, tonumber(limit))}
