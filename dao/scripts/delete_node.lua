-- Remove a node, its index entry and its owner entry, if the caller may.
-- KEYS: node hash, expiry index, owner index.
-- ARGV: node_id, actor ('' = nvllm itself), admin ('1'/'0').
-- Returns 1 when deleted, 0 when there is no node, -1 when it is another account's.
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
  return 0
end
if ARGV[3] ~= '1' then
  -- '' is a node from before owners were recorded: admins only.
  local owner = redis.call('HGET', KEYS[1], 'owner') or ''
  if owner == '' or owner ~= ARGV[2] then
    return -1
  end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
