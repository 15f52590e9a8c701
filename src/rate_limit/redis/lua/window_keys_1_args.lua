-- window_keys_1_args.lua: the quota.
-- Reads: ARGV[3] limit, ARGV[4] window, ARGV[5] granularity, ARGV[6] slot bound.
-- Leaves: N, W, g, bound.
local N, W = tonumber(ARGV[3]), tonumber(ARGV[4])
local g, bound = tonumber(ARGV[5]), tonumber(ARGV[6])
