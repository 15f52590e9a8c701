-- batch_7_write.lua: stages an admitted window check's write, records the admission, and
-- opens the branch of a refusal (closed by batch_8_refused.lua).
-- Reads: window_admit's value and newest_after; first, nslots, stamp, W, now, N, count,
--   cost, k, text, fmt, stage, nstaged, r, reset.
-- Leaves: reset (updated when the only live slot is the new one), reply[r + 1 .. r + 3].
          if first > nslots then reset = stamp + W - now end
          local ttl = newest_after + W - now
          local ms = (ttl - ttl % 1000) / 1000 + 1
          local ttl_text = text[ms]
          if not ttl_text then
            ttl_text = fmt('%d', ms)
            text[ms] = ttl_text
          end
          stage[nstaged + 1], stage[nstaged + 2], stage[nstaged + 3] = k, value, ttl_text
          nstaged = nstaged + 3
        end
        reply[r + 1], reply[r + 2], reply[r + 3] = N - count - cost, reset, 0
      else
