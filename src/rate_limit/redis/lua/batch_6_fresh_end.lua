-- batch_6_fresh_end.lua: closes the block of batch_5_fresh_memo.lua.
-- Reads: nothing. Leaves: nothing.
          end
