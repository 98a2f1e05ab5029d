-- Heartbeat: overwrite the sent fields of an existing node and push its
-- expiry forward. Checking existence here, not in a read before, is what
-- keeps a heartbeat racing a delete from bringing the node back.
-- KEYS: node hash, expiry index. ARGV: node_id, now, field, value, ...
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
if #ARGV > 2 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 3))
end
redis.call('HSET', KEYS[1], 'update_time', ARGV[2])
local timeout = tonumber(redis.call('HGET', KEYS[1], 'timeout')) or 60
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]) + timeout, ARGV[1])
return redis.call('HGETALL', KEYS[1])
