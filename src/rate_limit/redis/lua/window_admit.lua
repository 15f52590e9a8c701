
local live = m - first + 1
local merge = live > 0 and stamp <= newest
local drop = live - bound
if not merge then drop = drop + 1 end
local kept = count + cost
if drop > 0 then
  kept = kept - c1
  for j = first + 1, first + drop - 1 do
    if wc > 0 then
      local _, c = unpk(FS[tag], raw, hz + (j - 1) * ss + 1)
      kept = kept - c
    else
      kept = kept - 1
    end
  end
else
  drop = 0
end
local from, value, nn = first + drop, nil, stamp
local p = hz + (from - 1) * ss + 1
if merge then nn = newest end
if from > m then
  value = fresh
elseif tag == counts_tag then
  if merge then
    value = sub(raw, 1, 8 - wt) .. pk(F[wc], kept) .. sub(raw, p, len - wc) .. pk(F[wc], lastc + cost)
  else
    value = counts_head .. pk(F[wc], kept) .. sub(raw, p) .. counts_slot
  end
elseif tag == counts_tag - wc0 and cost == 1 and not merge then
  value = ones_head .. sub(raw, p) .. ones_slot
else
  -- Another form: re-encode the kept slots (with the new admission) in the quota's form.
  local ts, cs, n = {}, {}, 0
  for j = from, m do
    local q = hz + (j - 1) * ss + 1
    local t, c = unpk(F[wt], raw, q), 1
    if wc > 0 then c = unpk(F[wc], raw, q + wt) end
    n = n + 1
    ts[n], cs[n] = newest - (newest - t) % M, c
  end
  if merge then
    cs[n] = cs[n] + cost
  else
    n = n + 1
    ts[n], cs[n] = stamp, cost
  end
  -- Only a clock stepping back (the newest slot ahead of now) across a quota change can span
  -- M0 or more: the times are then written wider. Slots more than 2^48 µs (8.9 years) older
  -- than the newest, which only a clock stepping back by more than that could keep, are
  -- forgotten.
  local s, ones, w, v = 1, true, 0, wt0
  while P[v] <= nn - ts[s] and v < 6 do v = v + 1 end
  while P[v] <= nn - ts[s] do
    kept = kept - cs[s]
    s = s + 1
  end
  for j = s, n do
    if cs[j] ~= 1 then ones = false end
  end
  if not ones then
    w = wc0
    while P[w] <= kept do w = w + 1 end
  end
  local Mv = P[v]
  local parts = {string.char(112 + 16 * v + w), pk(F[7 - v], (nn - nn % Mv) / Mv)}
  if w > 0 then parts[3] = pk(F[w], kept) end
  for j = s, n do
    parts[#parts + 1] = pk(F[v], ts[j] % Mv)
    if w > 0 then parts[#parts + 1] = pk(F[w], cs[j]) end
  end
  value = table.concat(parts)
end
