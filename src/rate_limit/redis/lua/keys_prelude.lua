-- keys_prelude.lua: the start of the per-key scripts (gcra_keys, window_keys, multi).
-- Reads: KEYS (the keys to decide), ARGV[1] the cost, ARGV[2] now in microseconds (0: the
--   server's TIME).
-- Leaves: call, keys, unpk, pk, sub, byte (library functions read once), cost, now,
--   state (every key's value, one MGET; false for a missing key), reply = {}.
local call, keys = redis.call, KEYS
local unpk, pk, sub, byte = struct.unpack, struct.pack, string.sub, string.byte
local cost, now = tonumber(ARGV[1]), tonumber(ARGV[2])
if now == 0 then
  local t = call('TIME')
  now = t[1] * 1000000 + t[2]
end
local state = call('MGET', unpack(keys))
local reply = {}
