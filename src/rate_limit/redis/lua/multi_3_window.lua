
    if v >= 0 then
      ok, a = 1, nd
      if cost > 0 then writes[#writes + 1] = {keys[i], now + nd, nd} end
    else
      a = d
      if cost <= B then retry = nd - BT else retry = -1 end
    end
  else
    local N, W = tonumber(ARGV[p + 2]), tonumber(ARGV[p + 3])
    local g, bound = tonumber(ARGV[p + 4]), tonumber(ARGV[p + 5])
