-- window_one_2_decide.lua: the reset time, and the branch of an admitted request.
-- Reads: window_scan's first, nslots, first_at, count; W, now, N, cost.
-- Leaves: reset (microseconds until the oldest live slot leaves; 0 if none), and opens the
--   blocks "admitted" and "cost > 0" (closed by window_one_3_write.lua).
local reset = 0
if first <= nslots then reset = first_at + W - now end
if cost <= N and count + cost <= N then
  if cost > 0 then
