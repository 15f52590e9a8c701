-- window_keys_3_loop.lua: the TTL of a state whose newest slot is the one added now, and the
-- loop over the keys.
-- Reads: stamp, W, now, keys, state, fmt.
-- Leaves: ttl, stamp_ms (that TTL in milliseconds, formatted once), r (reply values so far),
--   and, inside the loop (closed by window_keys_6_refused.lua), i and raw.
-- The TTL of a state whose newest slot is the one added now (all but merges), formatted once.
local ttl = stamp + W - now
local stamp_ms = fmt('%d', (ttl - ttl % 1000) / 1000 + 1)
local r = 0
for i = 1, #keys do
  local raw = state[i]
