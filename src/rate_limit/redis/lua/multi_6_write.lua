
        if first > nslots then reset = stamp + W - now end
        writes[#writes + 1] = {keys[i], value, newest_after + W - now}
      end
    else
