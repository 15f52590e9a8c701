-- window_fresh.lua: the pieces of a window state written at stamp with cost.
-- Reads: pk, sub, F, wt0, wc0, M0, stamp, cost.
-- Assigns (the script declares them, so that a batch can keep them across keys):
--   ones_head, ones_slot (tag and high part, and the new slot, of a state without counts),
--   counts_tag, counts_head, counts_slot (the same with counts of wc0 bytes), and fresh,
--   the state holding only the new slot.
local high0 = pk(F[7 - wt0], (stamp - stamp % M0) / M0)
ones_head = string.char(112 + 16 * wt0) .. high0
ones_slot = pk(F[wt0], stamp % M0)
counts_tag = 112 + 16 * wt0 + wc0
counts_head = string.char(counts_tag) .. high0
counts_slot = pk(F[wt0] .. sub(F[wc0], 2), stamp % M0, cost)
if cost == 1 then
  fresh = ones_head .. ones_slot
else
  fresh = counts_head .. pk(F[wc0], cost) .. counts_slot
end
