
        if first > m then b = stamp + W - now end
        writes[#writes + 1] = {keys[i], value, nn + W - now}
      end
    else
