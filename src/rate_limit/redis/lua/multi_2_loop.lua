-- multi_2_loop.lua: the loop over the quotas, and the branch of a GCRA quota.
-- Reads: keys, state, ARGV.
-- Leaves: inside the loop (closed by multi_7_refused.lua): i, p (the quota's offset in
--   ARGV), raw, ok, a, reset, retry (this quota's reply values); in the GCRA branch, T, B, BT.
for i = 1, #keys do
  local p = 2 + (i - 1) * 5
  local raw = state[i]
  local ok, a, reset, retry = 0, 0, 0, 0
  if tonumber(ARGV[p + 1]) == 2 then
    local T, B = tonumber(ARGV[p + 2]), tonumber(ARGV[p + 3])
    local BT = B * T
