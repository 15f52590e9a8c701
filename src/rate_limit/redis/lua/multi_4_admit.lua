
    if first <= nslots then reset = first_at + W - now end
    if cost <= N and count + cost <= N then
      ok, a = 1, N - count - cost
      if cost > 0 then
