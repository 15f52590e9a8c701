
local m, total, first, gone, at1, c1 = 0, 0, 1, 0, 0, 0
local tag, wt, wc, hz, ss, M, newest, lastc = -1, 1, 0, 0, 0, 1, 0, 0
local len = raw and #raw or 0
if len > 1 then
  tag = byte(raw, 1)
  local t = tag - 128
  wc = t % 16
  wt = (t - wc) / 16 + 1
  hz, ss = 8 - wt + wc, wt + wc
  if t >= 0 and wt <= 6 and wc <= 4 and len > hz and (len - hz) % ss == 0 then
    m, M = (len - hz) / ss, P[wt]
    local hf = HF[tag]
    if not hf then
      local c = wc > 0 and sub(F[wc], 2) or ''
      hf = F[7 - wt] .. c .. sub(F[wt], 2) .. c
      HF[tag], FS[tag] = hf, F[wt] .. c
    end
    local high, tm
    if wc > 0 then
      high, total, at1, c1 = unpk(hf, raw, 2)
      tm, lastc = unpk(FS[tag], raw, len - ss + 1)
    else
      high, at1 = unpk(hf, raw, 2)
      total, c1, lastc = m, 1, 1
      tm = unpk(F[wt], raw, len - wt + 1)
    end
    newest = high * M + tm
    at1 = newest - (newest - at1) % M
    while at1 + W <= now do
      gone = gone + c1
      first = first + 1
      if first > m then break end
      if wc > 0 then
        at1, c1 = unpk(FS[tag], raw, hz + (first - 1) * ss + 1)
      else
        at1 = unpk(F[wt], raw, hz + (first - 1) * wt + 1)
      end
      at1 = newest - (newest - at1) % M
    end
  else
    tag, wc = -1, 0
  end
end
local count = total - gone
