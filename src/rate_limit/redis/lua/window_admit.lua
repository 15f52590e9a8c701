-- window_admit.lua: the new window state after admitting cost at stamp (window::admit).
-- Reads: window_scan's variables, raw, cost, stamp, bound (most slots kept), wt0, wc0, P, F,
--   pk, sub, unpk, SLOT_FMTS, M0, high0, and window_fresh's pieces (builds counts_head,
--   counts_slot and, for a cost other than 1, fresh, when a decision needs them and they are
--   not built yet).
-- Leaves: value (the new state) and newest_after (the time of its newest slot).
local live = nslots - first + 1
local merge = live > 0 and stamp <= newest
local drop = live - bound
if not merge then drop = drop + 1 end
local kept = count + cost
if drop > 0 then
  kept = kept - first_count
  for j = first + 1, first + drop - 1 do
    if wc > 0 then
      local _, c = unpk(SLOT_FMTS[tag], raw, head_len + (j - 1) * slot_len + 1)
      kept = kept - c
    else
      kept = kept - 1
    end
  end
else
  drop = 0
end
local from, value, newest_after = first + drop, nil, stamp
local p = head_len + (from - 1) * slot_len + 1
if not counts_head and (cost ~= 1 or tag == counts_tag) then
  counts_head = string.char(counts_tag) .. high0
  counts_slot = pk(F[wt0] .. sub(F[wc0], 2), stamp % M0, cost)
  if cost ~= 1 then fresh = counts_head .. pk(F[wc0], cost) .. counts_slot end
end
if merge then newest_after = newest end
if from > nslots then
  value = fresh
elseif tag == counts_tag then
  if merge then
    value = sub(raw, 1, 8 - wt) .. pk(F[wc], kept) .. sub(raw, p, len - wc) .. pk(F[wc], newest_count + cost)
  else
    value = counts_head .. pk(F[wc], kept) .. sub(raw, p) .. counts_slot
  end
elseif tag == counts_tag - wc0 and cost == 1 and not merge then
  value = ones_head .. sub(raw, p) .. ones_slot
else
  -- Another form: re-encode the kept slots (with the new admission) in the quota's form.
  local ts, cs, n = {}, {}, 0
  for j = from, nslots do
    local q = head_len + (j - 1) * slot_len + 1
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
  local s, ones, wc_new, wt_new = 1, true, 0, wt0
  while P[wt_new] <= newest_after - ts[s] and wt_new < 6 do wt_new = wt_new + 1 end
  while P[wt_new] <= newest_after - ts[s] do
    kept = kept - cs[s]
    s = s + 1
  end
  for j = s, n do
    if cs[j] ~= 1 then ones = false end
  end
  if not ones then
    wc_new = wc0
    while P[wc_new] <= kept do wc_new = wc_new + 1 end
  end
  local M_new = P[wt_new]
  local parts = {string.char(112 + 16 * wt_new + wc_new), pk(F[7 - wt_new], (newest_after - newest_after % M_new) / M_new)}
  if wc_new > 0 then parts[3] = pk(F[wc_new], kept) end
  for j = s, n do
    parts[#parts + 1] = pk(F[wt_new], ts[j] % M_new)
    if wc_new > 0 then parts[#parts + 1] = pk(F[wc_new], cs[j]) end
  end
  value = table.concat(parts)
end
