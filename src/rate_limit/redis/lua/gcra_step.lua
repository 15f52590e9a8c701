
local d = 0
if raw then
  local tat = tonumber(raw) or 0
  if tat > now then d = tat - now end
end
local nd = d + cost * T
local v = nd
if cost > B then
  v = -4503599627370496 - d
elseif nd > BT then
  v = BT - nd
end
