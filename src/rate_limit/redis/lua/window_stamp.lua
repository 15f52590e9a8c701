
local stamp = now
if g > 1 then
  local rr = now % g
  if rr < 0 then rr = rr + g elseif rr >= g then rr = rr - g end
  if rr > 0 then stamp = now - rr + g end
end
