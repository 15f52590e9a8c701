-- window_fresh.lua: the pieces of a window state written at stamp with cost.
-- Reads: pk, F, wt0, wc0, M0, stamp, cost.
-- Assigns (the script declares them, so that a batch can keep them across keys): high0
--   (the high part of stamp), counts_tag (the tag of the quota's form with counts of wc0
--   bytes), and for cost 1 ones_head, ones_slot (tag and high part, and the new slot, of a
--   state without counts) and fresh (the state holding only the new slot). counts_head is
--   left nil: window_admit builds the pieces with counts (and, for another cost, fresh) when
--   a decision needs them (rare), which saves every other decision their packing.
high0 = pk(F[7 - wt0], (stamp - stamp % M0) / M0)
counts_tag = 112 + 16 * wt0 + wc0
counts_head, fresh = nil, nil
if cost == 1 then
  ones_head = string.char(112 + 16 * wt0) .. high0
  ones_slot = pk(F[wt0], stamp % M0)
  fresh = ones_head .. ones_slot
end
