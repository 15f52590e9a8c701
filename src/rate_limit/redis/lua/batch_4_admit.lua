-- batch_4_admit.lua: a window check's reset time, and the branch of an admission.
-- Reads: window_scan's first, nslots, first_at, count; W, now, N, cost, D, q.
-- Leaves: reset, and opens the blocks "admitted" and "cost > 0" (closed by
--   batch_7_write.lua), in which g and bound.
      local reset = 0
      if first <= nslots then reset = first_at + W - now end
      if cost <= N and count + cost <= N then
        if cost > 0 then
          local g, bound = D[q + 4], D[q + 5]
