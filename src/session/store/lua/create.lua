-- CREATE: store a new session, only if no live one has this key.
-- KEYS[1]: the session hash (fields v c a i x u d b).
-- ARGV: now, c, a, i, x (microseconds), has_user ('1'/'0'), user, data, ttl (milliseconds),
-- binding ('' for none; optional).
-- Replies: 1 when created, 0 when a live session already has the key (left untouched).
-- Leaves: a fresh hash with v = '1', c a i x d from ARGV, u only if has_user, b only if a binding
-- is given, expiring in ttl
-- milliseconds. An expired leftover under the key is removed first.
local r = redis.call('HMGET', KEYS[1], 'v', 'c', 'a', 'i', 'x', 'u', 'd', 'b')
local now = tonumber(ARGV[1])
local alive = r[1] and now < math.min(tonumber(r[3]) + tonumber(r[4]), tonumber(r[5]))
if alive then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', '1', 'c', ARGV[2], 'a', ARGV[3], 'i', ARGV[4], 'x', ARGV[5], 'd', ARGV[8])
if ARGV[6] == '1' then redis.call('HSET', KEYS[1], 'u', ARGV[7]) end
if ARGV[10] and ARGV[10] ~= '' then redis.call('HSET', KEYS[1], 'b', ARGV[10]) end
redis.call('PEXPIRE', KEYS[1], ARGV[9])
return 1
