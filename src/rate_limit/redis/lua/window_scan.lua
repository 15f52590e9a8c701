-- window_scan.lua: decodes a window state and skips the slots that have left the window.
-- Reads: raw (the key's state, or false), now, W, unpk, sub, byte, F, P, HEAD_FMTS,
--   SLOT_FMTS (and fills the two memos).
-- Leaves: nslots (slots stored; 0 if none or unreadable), first (index of the oldest live
--   slot), first_at and first_count (its time and count, if first <= nslots), count (live
--   admissions), newest and newest_count (the newest slot's time and count), and the form:
--   tag (-1 if unreadable), wt, wc, head_len and slot_len (bytes), M = 256^wt, len.
local nslots, total, first, gone, first_at, first_count = 0, 0, 1, 0, 0, 0
local tag, wt, wc, head_len, slot_len, M, newest, newest_count = -1, 1, 0, 0, 0, 1, 0, 0
local len = raw and #raw or 0
if len > 1 then
  tag = byte(raw, 1)
  local t = tag - 128
  wc = t % 16
  wt = (t - wc) / 16 + 1
  head_len, slot_len = 8 - wt + wc, wt + wc
  if t >= 0 and wt <= 6 and wc <= 4 and len > head_len and (len - head_len) % slot_len == 0 then
    nslots, M = (len - head_len) / slot_len, P[wt]
    local head_fmt = HEAD_FMTS[tag]
    if not head_fmt then
      local c = wc > 0 and sub(F[wc], 2) or ''
      head_fmt = F[7 - wt] .. c .. sub(F[wt], 2) .. c
      HEAD_FMTS[tag], SLOT_FMTS[tag] = head_fmt, F[wt] .. c
    end
    local high, newest_low
    if wc > 0 then
      high, total, first_at, first_count = unpk(head_fmt, raw, 2)
      newest_low, newest_count = unpk(SLOT_FMTS[tag], raw, len - slot_len + 1)
    else
      high, first_at = unpk(head_fmt, raw, 2)
      total, first_count, newest_count = nslots, 1, 1
      newest_low = unpk(F[wt], raw, len - wt + 1)
    end
    newest = high * M + newest_low
    first_at = newest - (newest - first_at) % M
    while first_at + W <= now do
      gone = gone + first_count
      first = first + 1
      if first > nslots then break end
      if wc > 0 then
        first_at, first_count = unpk(SLOT_FMTS[tag], raw, head_len + (first - 1) * slot_len + 1)
      else
        first_at = unpk(F[wt], raw, head_len + (first - 1) * wt + 1)
      end
      first_at = newest - (newest - first_at) % M
    end
  else
    tag, wc = -1, 0
  end
end
local count = total - gone
