-- clock_prelude.lua: the start of every script deciding one request (gcra_keys, gcra_one,
-- window_keys, window_one, multi, reserve).
-- Reads: ARGV[1] the cost, ARGV[2] now in microseconds (0: the server's TIME).
-- Leaves: call, unpk, pk, sub, byte (library functions read once), cost, now.
local call = redis.call
local unpk, pk, sub, byte = struct.unpack, struct.pack, string.sub, string.byte
local cost, now = tonumber(ARGV[1]), tonumber(ARGV[2])
if now == 0 then
  local t = call('TIME')
  now = t[1] * 1000000 + t[2]
end
