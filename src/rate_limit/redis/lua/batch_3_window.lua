-- batch_3_window.lua: records a GCRA check's decision (stages its write), and opens the
-- branch of a window check.
-- Reads: gcra_step's outcome and used_after; now, cost, k, text, fmt, stage, nstaged, r.
-- Leaves: reply[r], all, a staged write if admitted; in the window branch, N, W.
      r = r + 1
      reply[r] = outcome
      if outcome < 0 then
        all = false
      elseif cost > 0 then
        local tat = now + used_after
        local tat_text = text[tat]
        if not tat_text then
          tat_text = fmt('%d', tat)
          text[tat] = tat_text
        end
        local ms = (used_after - used_after % 1000) / 1000 + 1
        local ttl_text = text[ms]
        if not ttl_text then
          ttl_text = fmt('%d', ms)
          text[ms] = ttl_text
        end
        stage[nstaged + 1], stage[nstaged + 2], stage[nstaged + 3] = k, tat_text, ttl_text
        nstaged = nstaged + 3
      end
    else
      local N, W = D[q + 2], D[q + 3]
