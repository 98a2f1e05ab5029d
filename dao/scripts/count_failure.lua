-- Count a login attempt as failed before its password is checked, or refuse it
-- unchecked: counting first is what keeps concurrent guesses from outrunning
-- the limit. A success takes the count back (forgive_failure.lua).
-- KEYS: per (user, address), per user, per address: hashes {n, last}.
-- ARGV: now (ms), free attempts per (user, address), free attempts per user or
-- per address alone, window (s): the counters' lifetime and the longest wait.
-- Past its free attempts, a counter makes each next attempt wait 1 s, 2 s,
-- 4 s ... (at most the window) after its last failure.
-- Returns {1, 0} when counted, {0, ms to wait} when refused (nothing counted).
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[4])
local free = {tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[3])}
local wait = 0
for i, key in ipairs(KEYS) do
  -- A counter left by an older version was a plain string.
  if redis.call('TYPE', key).ok ~= 'hash' then
    redis.call('DEL', key)
  end
  local n = tonumber(redis.call('HGET', key, 'n') or '0')
  if n >= free[i] then
    local last = tonumber(redis.call('HGET', key, 'last') or '0')
    local backoff = math.min(2 ^ (n - free[i]), window) * 1000
    wait = math.max(wait, last + backoff - now)
  end
end
if wait > 0 then
  return {0, math.ceil(wait)}
end
for _, key in ipairs(KEYS) do
  redis.call('HINCRBY', key, 'n', 1)
  redis.call('HSET', key, 'last', ARGV[1])
  redis.call('EXPIRE', key, window)
end
return {1, 0}
