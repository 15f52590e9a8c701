
          if first > m then b = stamp + W - now end
          local ttl = nn + W - now
          local ms = (ttl - ttl % 1000) / 1000 + 1
          local sp = text[ms]
          if not sp then
            sp = fmt('%d', ms)
            text[ms] = sp
          end
          stage[nw + 1], stage[nw + 2], stage[nw + 3] = k, value, sp
          nw = nw + 3
        end
        reply[r + 1], reply[r + 2], reply[r + 3] = N - count - cost, b, 0
      else
