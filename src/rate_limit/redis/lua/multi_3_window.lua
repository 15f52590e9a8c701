-- multi_3_window.lua: records a GCRA quota's decision, and opens the branch of a window
-- quota.
-- Reads: gcra_step's outcome, used, used_after; keys, i, now, cost, B, BT, ARGV, p, fmt.
-- Leaves: ok, a, retry, a pending write if admitted; in the window branch, N, W, g, bound.
    if outcome >= 0 then
      ok, a = 1, used_after
      if cost > 0 then writes[#writes + 1] = {keys[i], fmt('%d', now + used_after), used_after} end
    else
      a = used
      if cost <= B then retry = used_after - BT else retry = -1 end
    end
  else
    local N, W = tonumber(ARGV[p + 2]), tonumber(ARGV[p + 3])
    local g, bound = tonumber(ARGV[p + 4]), tonumber(ARGV[p + 5])
