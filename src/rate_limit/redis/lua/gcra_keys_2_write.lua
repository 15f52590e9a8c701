
  reply[i] = v
  if v < 0 or cost == 0 then
  elseif d == 0 then
    call('SET', keys[i], fresh, 'PX', fresh_ms)
  else
    call('SET', keys[i], now + nd, 'PX', (nd - nd % 1000) / 1000 + 1)
  end
end
return reply
