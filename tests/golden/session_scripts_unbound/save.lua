-- SAVE: compare-and-set write of a live session; never creates one.
-- KEYS[1]: the session hash (fields v c a i x u d).
-- ARGV: now, expected version, c, a, i, x (microseconds), has_user ('1'/'0'), user, data,
-- ttl (milliseconds), and optionally indexed ('1' when the caller has already recorded
-- this session in the user's index with the absolute deadline x).
-- Replies: {0} when the session is missing or expired (nothing written);
-- {1, v, c, a, i, x, u, d} when its version is not the expected one (nothing written);
-- {3} when the write would make the session belong to a user, or move its absolute deadline
-- later, and indexed is not '1': the caller must write the index entry first (nothing
-- written); {2, old u, old x} when written.
-- Leaves (when written): v incremented, c a i x d from ARGV, u set or removed (has_user), the
-- key expiring in ttl milliseconds.
local r = redis.call('HMGET', KEYS[1], 'v', 'c', 'a', 'i', 'x', 'u', 'd')
local now = tonumber(ARGV[1])
local alive = r[1] and now < math.min(tonumber(r[3]) + tonumber(r[4]), tonumber(r[5]))
if not alive then return {0} end
if r[1] ~= ARGV[2] then return {1, r[1], r[2], r[3], r[4], r[5], r[6], r[7]} end
if ARGV[7] == '1' and ARGV[11] ~= '1' and (r[6] ~= ARGV[8] or tonumber(ARGV[6]) > tonumber(r[5])) then
  return {3}
end
redis.call('HSET', KEYS[1], 'v', tostring(tonumber(r[1]) + 1), 'c', ARGV[3], 'a', ARGV[4], 'i', ARGV[5], 'x', ARGV[6], 'd', ARGV[9])
if ARGV[7] == '1' then redis.call('HSET', KEYS[1], 'u', ARGV[8]) else redis.call('HDEL', KEYS[1], 'u') end
redis.call('PEXPIRE', KEYS[1], ARGV[10])
return {2, r[6], r[5]}
