
local rem = N - count
if rem < 0 then rem = 0 end
local wait = -1
if cost <= N then
  local excess, acc = count + cost - N, 0
  wait = b
  if wc == 0 then
    local j = first + excess - 1
    if j <= m then
      local t = unpk(F[wt], raw, hz + (j - 1) * wt + 1)
      wait = newest - (newest - t) % M + W - now
    end
  else
    for j = first, m do
      local t, c = unpk(FS[tag], raw, hz + (j - 1) * ss + 1)
      acc = acc + c
      if acc >= excess then
        wait = newest - (newest - t) % M + W - now
        break
      end
    end
  end
end
