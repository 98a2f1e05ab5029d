-- A login succeeded: forget the (user, address) counter, and take the attempt
-- back from the per-user and per-address counts (count_failure.lua counted it).
-- KEYS: per (user, address), per user, per address.
redis.call('DEL', KEYS[1])
for i = 2, 3 do
  local n = tonumber(redis.call('HGET', KEYS[i], 'n') or '0')
  if n > 0 then
    redis.call('HINCRBY', KEYS[i], 'n', -1)
  end
end
return 1
