-- Heartbeat: overwrite the sent fields of an existing node and push its
-- expiry forward. Checking existence and owner here, not in a read before, is
-- what keeps a heartbeat racing a delete from bringing the node back, and a
-- race from taking another account's node over.
-- KEYS: node hash, expiry index.
-- ARGV: node_id, now, actor ('' = nvllm itself), admin ('1'/'0'), field, value, ...
-- Returns the node's fields, false when there is no node, -1 when it is another account's.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
if ARGV[4] ~= '1' then
  -- '' is a node from before owners were recorded: admins only.
  local owner = redis.call('HGET', KEYS[1], 'owner') or ''
  if owner == '' or owner ~= ARGV[3] then
    return -1
  end
end
if #ARGV > 4 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 5))
end
redis.call('HSET', KEYS[1], 'update_time', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'rev', 1)
local timeout = tonumber(redis.call('HGET', KEYS[1], 'timeout')) or 60
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]) + timeout, ARGV[1])
return redis.call('HGETALL', KEYS[1])
