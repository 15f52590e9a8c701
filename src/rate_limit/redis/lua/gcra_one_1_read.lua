-- gcra_one_1_read.lua: the quota and the key's state, after clock_prelude.lua.
-- Reads: KEYS[1], ARGV[3] interval, ARGV[4] burst, call.
-- Leaves: T, B, BT, raw (the key's state: the TAT as decimal text, or false).
local T, B = tonumber(ARGV[3]), tonumber(ARGV[4])
local BT = B * T
local raw = call('GET', KEYS[1])
