
  reply[i] = outcome
  if outcome < 0 or cost == 0 then
  elseif used == 0 then
    call('SET', keys[i], fresh, 'PX', fresh_ms)
  else
    call('SET', keys[i], now + used_after, 'PX', (used_after - used_after % 1000) / 1000 + 1)
  end
end
return reply
