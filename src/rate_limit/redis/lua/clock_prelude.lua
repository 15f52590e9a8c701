-- clock_prelude.lua: the start of every script deciding one request (gcra_keys, gcra_one,
-- window_keys, window_one, multi, reserve).
-- Reads: ARGV[1] the cost, ARGV[2] now in microseconds (0: the server's TIME).
-- Leaves: call, fmt, unpk, pk, sub, byte (library functions read once), cost, now.
-- A text-to-number conversion costs Redis about 0.1 us (and a number passed to call about
-- 0.2-0.3 us: the scripts pass fmt('%d', n) instead), so the usual cost and clock, '1' and
-- '0', are compared (one pointer compare), not converted.
local call, fmt = redis.call, string.format
local unpk, pk, sub, byte = struct.unpack, struct.pack, string.sub, string.byte
local cost, now = 1, 0
if ARGV[1] ~= '1' then cost = tonumber(ARGV[1]) end
if ARGV[2] ~= '0' then now = tonumber(ARGV[2]) end
if now == 0 then
  local t = call('TIME')
  now = t[1] * 1000000 + t[2]
end
