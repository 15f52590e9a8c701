-- window_one_4_refused.lua: the reply of a refusal.
-- Reads: window_retry's remaining and wait; reset.
-- Leaves: the reply.
return {-1 - remaining, reset, wait}
