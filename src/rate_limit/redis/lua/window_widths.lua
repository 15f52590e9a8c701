-- window_widths.lua: the widths of a window state written for the quota.
-- Reads: P, N (limit), W (window), g (granularity).
-- Leaves: wt0 (bytes of a slot's time), wc0 (bytes of a count, when counts are stored),
--   M0 = 256^wt0 >= W + g.
local wt0, wc0 = 1, 1
while P[wt0] < W + g do wt0 = wt0 + 1 end
while P[wc0] <= N do wc0 = wc0 + 1 end
local M0 = P[wt0]
