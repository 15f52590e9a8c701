
for i = 1, #keys do
  local p = 2 + (i - 1) * 5
  local raw = state[i]
  local ok, a, reset, retry = 0, 0, 0, 0
  if tonumber(ARGV[p + 1]) == 2 then
    local T, B = tonumber(ARGV[p + 2]), tonumber(ARGV[p + 3])
    local BT = B * T
