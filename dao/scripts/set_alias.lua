-- Set an alias, in one step with the checks that depend on what is stored:
-- no alias may point at another alias, nor be the target of one (a chain
-- would route differently depending on which instance resolved it first),
-- and at most ARGV[4] aliases exist.
-- KEYS: alias -> model hash, hidden aliases set, revision counter.
-- ARGV: alias, model, listed ('1'/'0'), most aliases.
-- Returns 'ok', 'target_is_alias', 'alias_is_target' or 'full'.
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then
  return 'target_is_alias'
end
for _, model in ipairs(redis.call('HVALS', KEYS[1])) do
  if model == ARGV[1] then
    return 'alias_is_target'
  end
end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
  return 'full'
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] == '1' then
  redis.call('SREM', KEYS[2], ARGV[1])
else
  redis.call('SADD', KEYS[2], ARGV[1])
end
redis.call('INCR', KEYS[3])
return 'ok'
