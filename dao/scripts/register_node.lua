-- Upsert a node: replace its hash wholesale but keep its create_time, and
-- index it by expiry, in one step so no reader sees half a node.
-- KEYS: node hash, expiry index. ARGV: node_id, expires_at, field, value, ...
local created = redis.call('HGET', KEYS[1], 'create_time')
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
if created then
  redis.call('HSET', KEYS[1], 'create_time', created)
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return redis.call('HGETALL', KEYS[1])
