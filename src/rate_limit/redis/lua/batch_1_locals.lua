-- batch_1_locals.lua: library functions, read once.
-- Reads: nothing.
-- Leaves: call, num, fmt, unpk, pk, sub, byte.
local call, num, fmt = redis.call, tonumber, string.format
local unpk, pk, sub, byte = struct.unpack, struct.pack, string.sub, string.byte
