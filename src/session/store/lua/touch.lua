-- TOUCH: mark a live session as used now.
-- KEYS[1]: the session hash (fields v c a i x u d b).
-- ARGV[1]: now (microseconds).
-- Replies: 1 when touched, 0 when the session is missing or expired.
-- Leaves (when touched): 'a' = now and the key's TTL moved to the new deadline.
local r = redis.call('HMGET', KEYS[1], 'v', 'c', 'a', 'i', 'x', 'u', 'd', 'b')
local now = ARGV[1] + 0
local alive = r[1] and now < r[3] + r[4] and now < r[5] + 0
local function ttl(a)
  return math.max(1, math.ceil((math.min(a + tonumber(r[4]), tonumber(r[5])) - now) / 1000))
end
if not alive then return 0 end
redis.call('HSET', KEYS[1], 'a', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl(now))
return 1
