-- multi_7_refused.lua: records a refused window quota, the quota's reply values, closes the
-- loop, and applies the writes if every quota admitted.
-- Reads: window_retry's remaining and wait; ok, a, reset, retry, writes, reply, fmt.
-- Leaves: the reply.
      a, retry = remaining, wait
    end
  end
  if ok == 0 then reply[1] = 0 end
  local r = #reply
  reply[r + 1], reply[r + 2], reply[r + 3], reply[r + 4] = ok, a, reset, retry
end
if reply[1] == 1 then
  for _, w in ipairs(writes) do
    call('SET', w[1], w[2], 'PX', fmt('%d', (w[3] - w[3] % 1000) / 1000 + 1))
  end
end
return reply
