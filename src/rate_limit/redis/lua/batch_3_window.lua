
      r = r + 1
      reply[r] = v
      if v < 0 then
        all = false
      elseif cost > 0 then
        local tat = now + nd
        local sv = text[tat]
        if not sv then
          sv = fmt('%d', tat)
          text[tat] = sv
        end
        local ms = (nd - nd % 1000) / 1000 + 1
        local sp = text[ms]
        if not sp then
          sp = fmt('%d', ms)
          text[ms] = sp
        end
        stage[nw + 1], stage[nw + 2], stage[nw + 3] = k, sv, sp
        nw = nw + 3
      end
    else
      local N, W = D[q + 2], D[q + 3]
