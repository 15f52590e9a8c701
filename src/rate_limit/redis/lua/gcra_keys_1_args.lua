-- gcra_keys_1_args.lua: the quota, the state of a key whose bucket was full, and the loop
-- over the keys.
-- Reads: ARGV[3] interval, ARGV[4] burst, cost, now, keys, state, fmt.
-- Leaves: T, B, BT, cost_us, fresh and fresh_ms (the new state and TTL of a key whose
--   bucket was full, formatted once), and, inside the loop (closed by
--   gcra_keys_2_write.lua), i and raw.
local T, B = tonumber(ARGV[3]), tonumber(ARGV[4])
local BT, cost_us = B * T, cost * T
-- The state and TTL of a key whose bucket was full (the common case), formatted once.
local fresh = fmt('%d', now + cost_us)
local fresh_ms = fmt('%d', (cost_us - cost_us % 1000) / 1000 + 1)
for i = 1, #keys do
  local raw = state[i]
