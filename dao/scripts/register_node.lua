-- Upsert a node: replace its hash wholesale but keep its create_time, its
-- owner and its probe_failing flag (a target failing /health stays out of
-- rotation until a poll succeeds), and index it by expiry, in one step so no
-- reader sees half a node. The owner check and the caps are here, not in a
-- read before, so no race can take another account's node over or pass a cap.
-- KEYS: node hash, expiry index, owner index (node_id -> owner).
-- ARGV: node_id, expires_at, actor ('' = nvllm itself), admin ('1'/'0'),
--       most nodes, most nodes per account, field, value, ...
-- Returns {'ok', field, value, ...}, {'forbidden'}, {'full'} or {'account_full'}.
-- `rev` counts the node's writes, so a fleet refresh reads only what changed.
local actor, admin = ARGV[3], ARGV[4] == '1'
local exists = redis.call('EXISTS', KEYS[1]) == 1
local old = redis.call('HMGET', KEYS[1], 'create_time', 'owner', 'probe_failing', 'rev')
local owner = actor
if exists then
  owner = old[2] or ''
  -- '' is a node from before owners were recorded: admins only.
  if not admin and (owner == '' or owner ~= actor) then
    return {'forbidden'}
  end
else
  if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then
    return {'full'}
  end
  local mine = 0
  for _, who in ipairs(redis.call('HVALS', KEYS[3])) do
    if who == actor then
      mine = mine + 1
    end
  end
  if mine >= tonumber(ARGV[6]) then
    return {'account_full'}
  end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
redis.call('HSET', KEYS[1], 'owner', owner, 'rev', (tonumber(old[4]) or 0) + 1)
if old[1] then
  redis.call('HSET', KEYS[1], 'create_time', old[1])
end
if old[3] then
  redis.call('HSET', KEYS[1], 'probe_failing', old[3])
end
if owner ~= '' then
  redis.call('HSET', KEYS[3], ARGV[1], owner)
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
local reply = redis.call('HGETALL', KEYS[1])
table.insert(reply, 1, 'ok')
return reply
