-- window_stamp.lua: the time an admission at now is recorded at (window::stamp): now
-- rounded up to the granularity.
-- Reads: now, g.
-- Leaves: stamp.
local stamp = now
if g > 1 then
  local offset = now % g
  if offset < 0 then offset = offset + g elseif offset >= g then offset = offset - g end
  if offset > 0 then stamp = now - offset + g end
end
