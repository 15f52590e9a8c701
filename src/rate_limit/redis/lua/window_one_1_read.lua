-- window_one_1_read.lua: the arguments and the key's state.
-- Reads: KEYS[1], ARGV[1] the cost, ARGV[2] now in microseconds (0: the server's TIME),
--   ARGV[3] limit, ARGV[4] window, ARGV[5] granularity, ARGV[6] slot bound.
-- Leaves: call, unpk, pk, sub, byte (library functions read once), cost, now, N, W, g,
--   bound, raw (the key's state, or false).
local call = redis.call
local unpk, pk, sub, byte = struct.unpack, struct.pack, string.sub, string.byte
local cost, now = tonumber(ARGV[1]), tonumber(ARGV[2])
if now == 0 then
  local t = call('TIME')
  now = t[1] * 1000000 + t[2]
end
local N, W = tonumber(ARGV[3]), tonumber(ARGV[4])
local g, bound = tonumber(ARGV[5]), tonumber(ARGV[6])
local raw = call('GET', KEYS[1])
