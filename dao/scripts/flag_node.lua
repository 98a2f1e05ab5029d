-- Set fields of a node only if it still exists; no heartbeat, no resurrection.
-- KEYS: node hash. ARGV: field, value, ...
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
