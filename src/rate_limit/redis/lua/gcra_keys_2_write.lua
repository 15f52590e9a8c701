-- gcra_keys_2_write.lua: records the key's decision, writes its new state, closes the loop
-- and replies.
-- Reads: gcra_step's outcome, used, used_after; i, keys, cost, now, fresh, fresh_ms, fmt.
-- Leaves: the reply.
  reply[i] = outcome
  if outcome < 0 or cost == 0 then
  elseif used == 0 then
    call('SET', keys[i], fresh, 'PX', fresh_ms)
  else
    call('SET', keys[i], fmt('%d', now + used_after), 'PX', fmt('%d', (used_after - used_after % 1000) / 1000 + 1))
  end
end
return reply
