-- window_keys_6_refused.lua: records a refusal, closes the loop and replies.
-- Reads: window_retry's remaining and wait; reset, r.
-- Leaves: the reply.
    reply[r + 1], reply[r + 2], reply[r + 3] = -1 - remaining, reset, wait
  end
  r = r + 3
end
return reply
