
    if outcome >= 0 then
      ok, a = 1, used_after
      if cost > 0 then writes[#writes + 1] = {keys[i], now + used_after, used_after} end
    else
      a = used
      if cost <= B then retry = used_after - BT else retry = -1 end
    end
  else
    local N, W = tonumber(ARGV[p + 2]), tonumber(ARGV[p + 3])
    local g, bound = tonumber(ARGV[p + 4]), tonumber(ARGV[p + 5])
