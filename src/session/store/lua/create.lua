-- CREATE: store a new session, only if no live one has this key.
-- KEYS[1]: the session hash (fields v c a i x u d b).
-- ARGV: now, c, a, i, x (microseconds), has_user ('1'/'0'), user, data, ttl (milliseconds),
-- binding ('' for none; optional).
-- Replies: 1 when created, 0 when a live session already has the key (left untouched).
-- Leaves: a fresh hash with v = '1', c a i x d from ARGV, u only if has_user, b only if a binding
-- is given, expiring in ttl
-- milliseconds. An expired leftover under the key is removed first.
-- Commands: EXISTS, one HSET, PEXPIRE for a free key (the usual case: keys are random); the
-- fields are read (HMGET v a i x) only when the key exists, and DEL runs only on a leftover.
if redis.call('EXISTS', KEYS[1]) == 1 then
  local r = redis.call('HMGET', KEYS[1], 'v', 'a', 'i', 'x')
  local now = ARGV[1] + 0
  local alive = r[1] and now < r[2] + r[3] and now < r[4] + 0
  if alive then return 0 end
  redis.call('DEL', KEYS[1])
end
local user = ARGV[6] == '1'
local bound = ARGV[10] and ARGV[10] ~= ''
if user and bound then
  redis.call('HSET', KEYS[1], 'v', '1', 'c', ARGV[2], 'a', ARGV[3], 'i', ARGV[4], 'x', ARGV[5], 'd', ARGV[8], 'u', ARGV[7], 'b', ARGV[10])
elseif bound then
  redis.call('HSET', KEYS[1], 'v', '1', 'c', ARGV[2], 'a', ARGV[3], 'i', ARGV[4], 'x', ARGV[5], 'd', ARGV[8], 'b', ARGV[10])
elseif user then
  redis.call('HSET', KEYS[1], 'v', '1', 'c', ARGV[2], 'a', ARGV[3], 'i', ARGV[4], 'x', ARGV[5], 'd', ARGV[8], 'u', ARGV[7])
else
  redis.call('HSET', KEYS[1], 'v', '1', 'c', ARGV[2], 'a', ARGV[3], 'i', ARGV[4], 'x', ARGV[5], 'd', ARGV[8])
end
redis.call('PEXPIRE', KEYS[1], ARGV[9])
return 1
