
local T, B = tonumber(ARGV[3]), tonumber(ARGV[4])
local BT, inc = B * T, cost * T
-- The state and TTL of a key whose bucket was full (the common case), formatted once.
local fresh = string.format('%d', now + inc)
local fresh_ms = string.format('%d', (inc - inc % 1000) / 1000 + 1)
for i = 1, #keys do
  local raw = state[i]
