
local T, B = tonumber(ARGV[3]), tonumber(ARGV[4])
local BT, cost_us = B * T, cost * T
-- The state and TTL of a key whose bucket was full (the common case), formatted once.
local fresh = string.format('%d', now + cost_us)
local fresh_ms = string.format('%d', (cost_us - cost_us % 1000) / 1000 + 1)
for i = 1, #keys do
  local raw = state[i]
