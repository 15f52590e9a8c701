-- keys_prelude.lua: every key's state, for the per-key scripts (gcra_keys, window_keys, multi,
-- reserve), after clock_prelude.lua.
-- Reads: KEYS (the keys to decide), call.
-- Leaves: keys, state (every key's value, one MGET; false for a missing key), reply = {}.
local keys = KEYS
local state = call('MGET', unpack(keys))
local reply = {}
