-- INDEX_ADD: record a session in its user's index (before the write that makes the session
-- belong to the user).
-- KEYS[1]: the user's index, a sorted set of session keys scored by absolute deadline.
-- ARGV[1]: now, ARGV[2]: the session key, ARGV[3]: its absolute deadline (microseconds).
-- Replies: 1.
-- Leaves: entries whose deadline is at or before now removed, this session added, or its
-- score raised to the deadline if lower (never lowered: an entry may outlive its session,
-- never the reverse), the index expiring with its longest-lived session.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local old = redis.call('ZSCORE', KEYS[1], ARGV[2])
if not old or tonumber(old) < tonumber(ARGV[3]) then redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2]) end
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((tonumber(top[2]) - tonumber(ARGV[1])) / 1000)))
return 1
