-- Delete a user unless it is the last admin, checked in the same step (see
-- update_user.lua). KEYS: user hash, username set. ARGV: user key prefix, username.
-- Returns 1 deleted, 0 no such user, -1 the last admin.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if redis.call('HGET', KEYS[1], 'role') == 'admin' then
  local admins = 0
  for _, name in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    if redis.call('HGET', ARGV[1] .. name, 'role') == 'admin' then
      admins = admins + 1
    end
  end
  if admins <= 1 then
    return -1
  end
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
return 1
