-- DELETE_IF_USER: remove a session if it belongs to a user (sign out everywhere).
-- KEYS[1]: the session hash (fields v c a i x u d b).
-- ARGV[1]: the user id, ARGV[2]: now (microseconds).
-- Replies: 1 when a live session of the user was removed, 2 when an expired leftover of the
-- user was removed, 0 when the key is missing or belongs to no one or someone else.
-- Leaves: the key removed whenever 'u' is the user (an expired leftover too), untouched
-- otherwise.
local r = redis.call('HMGET', KEYS[1], 'u', 'a', 'i', 'x')
if r[1] ~= ARGV[1] then return 0 end
local now = ARGV[2] + 0
local alive = now < r[2] + r[3] and now < r[4] + 0
redis.call('DEL', KEYS[1])
if alive then return 1 else return 2 end
