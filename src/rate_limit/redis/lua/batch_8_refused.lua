-- batch_8_refused.lua: records a refused window check, closes the check loop, applies the
-- request's staged writes to the batch's state if all its checks admitted, closes the
-- request loop, writes each changed key once and replies.
-- Reads: window_retry's remaining and wait; reset, r, all, stage, nstaged, state, px, dirty,
--   ndirty, keys.
-- Leaves: the reply.
        reply[r + 1], reply[r + 2], reply[r + 3] = -1 - remaining, reset, wait
        all = false
      end
      r = r + 3
    end
  end
  i = i + 1
  if not simple then a = a + n end
  if all then
    for j = 1, nstaged, 3 do
      local k = stage[j]
      if not px[k] then
        ndirty = ndirty + 1
        dirty[ndirty] = k
      end
      state[k], px[k] = stage[j + 1], stage[j + 2]
    end
  end
end
for i = 1, ndirty do
  local k = dirty[i]
  call('SET', keys[k], state[k], 'PX', px[k])
end
return reply
