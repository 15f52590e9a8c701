-- multi_1_setup.lua: the reply's first value and the pending writes.
-- Reads: reply.
-- Leaves: reply[1] = 1 (all admitted so far), writes = {} ({key, value, ttl} per admission).
reply[1] = 1
local writes = {}
