-- window_tables.lua: constants of the window scripts, once per script call.
-- Reads: nothing.
-- Leaves: F[w] (the struct format of an unsigned little-endian integer of w bytes), P[w] =
--   256^w, and the per-tag format memos HEAD_FMTS and SLOT_FMTS (filled by window_scan).
local F = {'<I1', '<I2', '<I3', '<I4', '<I5', '<I6', '<I7'}
local P = {256, 65536, 16777216, 4294967296, 1099511627776, 281474976710656}
local HEAD_FMTS, SLOT_FMTS = {}, {}
