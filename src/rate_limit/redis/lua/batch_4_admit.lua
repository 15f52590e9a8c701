
      local reset = 0
      if first <= nslots then reset = first_at + W - now end
      if cost <= N and count + cost <= N then
        if cost > 0 then
          local g, bound = D[q + 4], D[q + 5]
