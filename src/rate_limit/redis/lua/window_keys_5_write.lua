-- window_keys_5_write.lua: writes an admitted key's new state, records the admission, and
-- opens the branch of a refused request (closed by window_keys_6_refused.lua).
-- Reads: window_admit's value and newest_after; first, nslots, stamp, stamp_ms, W, now, N,
--   count, cost, keys, i, r, reset, fmt.
-- Leaves: reset (updated when the only live slot is the new one), reply[r + 1 .. r + 3].
      if first > nslots then reset = stamp + W - now end
      if newest_after == stamp then
        call('SET', keys[i], value, 'PX', stamp_ms)
      else
        ttl = newest_after + W - now
        call('SET', keys[i], value, 'PX', fmt('%d', (ttl - ttl % 1000) / 1000 + 1))
      end
    end
    reply[r + 1], reply[r + 2], reply[r + 3] = N - count - cost, reset, 0
  else
