
      if first > nslots then reset = stamp + W - now end
      if newest_after == stamp then
        call('SET', keys[i], value, 'PX', stamp_ms)
      else
        ttl = newest_after + W - now
        call('SET', keys[i], value, 'PX', (ttl - ttl % 1000) / 1000 + 1)
      end
    end
    reply[r + 1], reply[r + 2], reply[r + 3] = N - count - cost, reset, 0
  else
