-- window_one_1_read.lua: the quota and the key's state, after clock_prelude.lua.
-- Reads: KEYS[1], ARGV[3] limit, ARGV[4] window, ARGV[5] granularity, ARGV[6] slot bound,
--   call.
-- Leaves: N, W, g, bound, raw (the key's state, or false).
local N, W = tonumber(ARGV[3]), tonumber(ARGV[4])
local g, bound = tonumber(ARGV[5]), tonumber(ARGV[6])
local raw = call('GET', KEYS[1])
