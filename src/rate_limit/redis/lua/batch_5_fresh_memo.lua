-- batch_5_fresh_memo.lua: opens the block rebuilding window_fresh's pieces only when the
-- time, cost or quota differ from the last ones built (closed by batch_6_fresh_end.lua).
-- Reads: stamp, cost, q, memo_stamp, memo_cost, memo_q.
-- Leaves: memo_stamp, memo_cost, memo_q (updated).
          if stamp ~= memo_stamp or cost ~= memo_cost or q ~= memo_q then
            memo_stamp, memo_cost, memo_q = stamp, cost, q
