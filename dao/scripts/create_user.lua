-- Create a user only if the name is free, hash and index together.
-- KEYS: user hash, username set. ARGV: username, field, value, ...
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('SADD', KEYS[2], ARGV[1])
return 1
