-- Change an existing user's role and/or password hash and bump its token
-- version, in one step: a user deleted meanwhile is not brought back, two
-- changes at once both land, and the last admin cannot be demoted even by two
-- admins demoting each other at the same moment.
-- KEYS: user hash, username set. ARGV: user key prefix (the user hash's key
-- without the name), new role or '', new password hash or ''.
-- Returns the user's fields (HGETALL), false when there is none, or
-- 'last admin' when the change would leave no admin.
-- The other users' hashes are read by name from the set: nvllm runs on one
-- Redis (or Valkey) server, not a cluster.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
local role, digest = ARGV[2], ARGV[3]
if role ~= '' and role ~= 'admin' and redis.call('HGET', KEYS[1], 'role') == 'admin' then
  local admins = 0
  for _, name in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    if redis.call('HGET', ARGV[1] .. name, 'role') == 'admin' then
      admins = admins + 1
    end
  end
  if admins <= 1 then
    return 'last admin'
  end
end
if role ~= '' then
  redis.call('HSET', KEYS[1], 'role', role)
end
if digest ~= '' then
  redis.call('HSET', KEYS[1], 'password_hash', digest)
end
redis.call('HINCRBY', KEYS[1], 'token_version', 1)
return redis.call('HGETALL', KEYS[1])
