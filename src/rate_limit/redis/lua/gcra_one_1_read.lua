-- gcra_one_1_read.lua: the arguments and the key's state.
-- Reads: KEYS[1], ARGV[1] the cost, ARGV[2] now in microseconds (0: the server's TIME),
--   ARGV[3] interval, ARGV[4] burst.
-- Leaves: cost, now, T, B, BT, raw (the key's state: the TAT as decimal text, or false).
local cost, now = tonumber(ARGV[1]), tonumber(ARGV[2])
if now == 0 then
  local t = redis.call('TIME')
  now = t[1] * 1000000 + t[2]
end
local T, B = tonumber(ARGV[3]), tonumber(ARGV[4])
local BT = B * T
local raw = redis.call('GET', KEYS[1])
