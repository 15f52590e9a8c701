-- window_one_3_write.lua: writes the admitted key's new state and replies for an admission.
-- Reads: window_admit's value and newest_after; first, nslots, stamp, W, now, N, count, cost,
--   reset, fmt.
-- Leaves: the reply of an admission.
    if first > nslots then reset = stamp + W - now end
    local ttl = newest_after + W - now
    call('SET', KEYS[1], value, 'PX', fmt('%d', (ttl - ttl % 1000) / 1000 + 1))
  end
  local remaining, packed = N - count - cost, reset * (N + 1)
  if packed < 9007199254740992 - N then return packed + remaining end
  return {remaining, reset, 0}
end
