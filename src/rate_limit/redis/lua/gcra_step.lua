
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
