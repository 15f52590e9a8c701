-- multi_6_write.lua: queues an admitted window quota's write, and opens the branch of a
-- refusal (closed by multi_7_refused.lua).
-- Reads: window_admit's value and newest_after; first, nslots, stamp, W, now, keys, i.
-- Leaves: reset (updated when the only live slot is the new one), a pending write.
        if first > nslots then reset = stamp + W - now end
        writes[#writes + 1] = {keys[i], value, newest_after + W - now}
      end
    else
