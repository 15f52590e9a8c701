
          if stamp ~= memo_stamp or cost ~= memo_cost or q ~= memo_q then
            memo_stamp, memo_cost, memo_q = stamp, cost, q
