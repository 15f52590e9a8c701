-- multi_5_pieces.lua: declares the pieces window_fresh.lua assigns.
-- Reads: nothing.
-- Leaves: ones_head, ones_slot, counts_tag, counts_head, counts_slot, fresh, high0 (nil).
        local ones_head, ones_slot, counts_tag, counts_head, counts_slot, fresh, high0
