-- multi_4_admit.lua: a window quota's reset time, and the branch of an admission.
-- Reads: window_scan's first, nslots, first_at, count; W, now, N, cost.
-- Leaves: reset, ok and a (if admitted), and opens the blocks "admitted" and "cost > 0"
--   (closed by multi_6_write.lua).
    if first <= nslots then reset = first_at + W - now end
    if cost <= N and count + cost <= N then
      ok, a = 1, N - count - cost
      if cost > 0 then
