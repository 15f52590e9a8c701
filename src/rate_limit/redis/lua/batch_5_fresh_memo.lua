
          if stamp ~= ls or cost ~= lc or q ~= lq then
            ls, lc, lq = stamp, cost, q
