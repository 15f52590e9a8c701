
local call, num, fmt = redis.call, tonumber, string.format
local unpk, pk, sub, byte = struct.unpack, struct.pack, string.sub, string.byte
