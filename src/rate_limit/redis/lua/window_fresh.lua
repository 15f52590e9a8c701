-- window_fresh.lua: the pieces of a window state written at stamp with cost.
-- Reads: pk, sub, F, wt0, wc0, M0, stamp, cost.
-- Assigns (the script declares them, so that a batch can keep them across keys): high0
--   (the high part of stamp), counts_tag (the tag of the quota's form with counts of wc0
--   bytes), fresh (the state holding only the new slot), and the pieces of an appended slot:
--   for cost 1, ones_head and ones_slot (tag and high part, and the new slot, of a state
--   without counts); otherwise counts_head and counts_slot (the same with counts). A cost of
--   1 leaves counts_head nil: window_admit builds both counts pieces when a state with counts
--   needs them (rare), which saves every other decision their packing.
high0 = pk(F[7 - wt0], (stamp - stamp % M0) / M0)
counts_tag = 112 + 16 * wt0 + wc0
if cost == 1 then
  ones_head = string.char(112 + 16 * wt0) .. high0
  ones_slot = pk(F[wt0], stamp % M0)
  fresh = ones_head .. ones_slot
  counts_head = nil
else
  counts_head = string.char(counts_tag) .. high0
  counts_slot = pk(F[wt0] .. sub(F[wc0], 2), stamp % M0, cost)
  fresh = counts_head .. pk(F[wc0], cost) .. counts_slot
end
