-- window_retry.lua: for a refused window request, the units left and the wait.
-- Reads: window_scan's variables, raw, unpk, F, SLOT_FMTS, N, W, now, cost, reset (the
--   time until the oldest live slot leaves).
-- Leaves: remaining (units left, >= 0), wait (microseconds until cost fits; -1: never).
local remaining = N - count
if remaining < 0 then remaining = 0 end
local wait = -1
if cost <= N then
  local excess, acc = count + cost - N, 0
  wait = reset
  if wc == 0 then
    local j = first + excess - 1
    if j <= nslots then
      local t = unpk(F[wt], raw, head_len + (j - 1) * wt + 1)
      wait = newest - (newest - t) % M + W - now
    end
  else
    for j = first, nslots do
      local t, c = unpk(SLOT_FMTS[tag], raw, head_len + (j - 1) * slot_len + 1)
      acc = acc + c
      if acc >= excess then
        wait = newest - (newest - t) % M + W - now
        break
      end
    end
  end
end
