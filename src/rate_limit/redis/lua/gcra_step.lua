-- gcra_step.lua: one GCRA decision (the twin of gcra::decide).
-- Reads: raw (the key's state: the TAT as decimal text, or false), now, cost, T (the
--   interval), B (the burst), BT = B * T.
-- Leaves: used (microseconds of the bucket in use before), used_after (after admitting
--   cost), outcome: used_after if admitted (outcome >= 0 exactly then), minus the retry time
--   if refused, -2^52 minus used if the cost exceeds the burst (never admitted).
local used = 0
if raw then
  local tat = tonumber(raw) or 0
  if tat > now then used = tat - now end
end
local used_after = used + cost * T
local outcome = used_after
if cost > B then
  outcome = -4503599627370496 - used
elseif used_after > BT then
  outcome = BT - used_after
end
