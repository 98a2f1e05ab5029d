-- Forget a node whose retention ran out, unless a heartbeat revived it since
-- the caller looked.
-- KEYS: node hash, expiry index, owner index. ARGV: node_id, cutoff.
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if score and tonumber(score) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
