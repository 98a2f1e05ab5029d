-- Set fields of a node only if it still exists; no heartbeat, no resurrection.
-- KEYS: node hash. ARGV: field, value, ...
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV))
-- A new revision: fleet refreshes read only nodes whose `rev` changed.
redis.call('HINCRBY', KEYS[1], 'rev', 1)
return 1
