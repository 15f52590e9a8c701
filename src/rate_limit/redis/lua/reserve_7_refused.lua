-- reserve_7_refused.lua: multi_7_refused.lua, then what release.lua needs: per quota, the
-- key's value before and the value written.
-- Reads: window_retry's remaining and wait; ok, a, reset, retry, writes, reply, state, fmt.
-- Leaves: the reply.
      a, retry = remaining, wait
    end
  end
  if ok == 0 then reply[1] = 0 end
  local r = #reply
  reply[r + 1], reply[r + 2], reply[r + 3], reply[r + 4] = ok, a, reset, retry
end
if reply[1] == 1 then
  local r = #reply
  for j, w in ipairs(writes) do
    call('SET', w[1], w[2], 'PX', fmt('%d', (w[3] - w[3] % 1000) / 1000 + 1))
    reply[r + 2 * j - 1], reply[r + 2 * j] = state[j], w[2]
  end
end
return reply
