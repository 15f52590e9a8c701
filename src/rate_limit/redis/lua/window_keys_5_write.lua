
      if first > m then b = stamp + W - now end
      if nn == stamp then
        call('SET', keys[i], value, 'PX', stamp_ms)
      else
        ttl = nn + W - now
        call('SET', keys[i], value, 'PX', (ttl - ttl % 1000) / 1000 + 1)
      end
    end
    reply[r + 1], reply[r + 2], reply[r + 3] = N - count - cost, b, 0
  else
