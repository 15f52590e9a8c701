
        local ones_head, ones_slot, counts_tag, counts_head, counts_slot, fresh
