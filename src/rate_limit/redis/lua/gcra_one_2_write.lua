-- gcra_one_2_write.lua: writes the key's new state when admitted, and replies.
-- Reads: gcra_step's outcome, used_after; KEYS[1], cost, now, fmt.
-- Leaves: the reply.
if outcome >= 0 and cost > 0 then
  call('SET', KEYS[1], fmt('%d', now + used_after), 'PX', fmt('%d', (used_after - used_after % 1000) / 1000 + 1))
end
return outcome
