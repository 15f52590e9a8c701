-- LOAD: read a session, refreshing its idle deadline when due.
-- KEYS[1]: the session hash (fields v c a i x u d b).
-- ARGV[1]: now (microseconds); ARGV[2]: '1' to refresh the idle deadline, '0' not to.
-- Replies: nil when the session is missing or expired; else the fields {v, c, a, i, x, u, d, b}
-- (u and b may be missing).
-- Leaves: when refreshing and more than a quarter of the idle timeout has passed since the
-- last access, 'a' = now and the key's TTL moved to the new deadline; nothing otherwise.
local r = redis.call('HMGET', KEYS[1], 'v', 'c', 'a', 'i', 'x', 'u', 'd', 'b')
local now = ARGV[1] + 0
local alive = r[1] and now < r[3] + r[4] and now < r[5] + 0
local function ttl(a)
  return math.max(1, math.ceil((math.min(a + tonumber(r[4]), tonumber(r[5])) - now) / 1000))
end
if not alive then return false end
if ARGV[2] == '1' and now - tonumber(r[3]) > math.floor(tonumber(r[4]) / 4) then
  redis.call('HSET', KEYS[1], 'a', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ttl(now))
  r[3] = ARGV[1]
end
return r
