-- Replace a password hash with a costlier one of the same password, only if
-- it is still the hash the login just verified: a password changed meanwhile
-- wins. The token version stays: a re-hash revokes nothing.
-- KEYS: user hash. ARGV: the verified hash, the new one. Returns 1 if replaced.
if redis.call('HGET', KEYS[1], 'password_hash') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'password_hash', ARGV[2])
return 1
