-- DELETE: remove a session, unconditionally or only at an expected version.
-- KEYS[1]: the session hash (fields v c a i x u d b).
-- ARGV[1]: now (microseconds); ARGV[2]: the expected version, or '' for any.
-- Replies: {0} when the session is missing or expired (an expired leftover is removed);
-- {1, v, c, a, i, x, u, d, b} when its version is not the expected one (nothing removed);
-- {2} when removed.
local r = redis.call('HMGET', KEYS[1], 'v', 'c', 'a', 'i', 'x', 'u', 'd', 'b')
local now = ARGV[1] + 0
local alive = r[1] and now < r[3] + r[4] and now < r[5] + 0
if not alive then redis.call('DEL', KEYS[1]) return {0} end
if ARGV[2] ~= '' and r[1] ~= ARGV[2] then return {1, r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8]} end
redis.call('DEL', KEYS[1])
return {2}
