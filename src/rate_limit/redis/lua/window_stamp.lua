
local stamp = now
if g > 1 then
  local offset = now % g
  if offset < 0 then offset = offset + g elseif offset >= g then offset = offset - g end
  if offset > 0 then stamp = now - offset + g end
end
