-- batch: the requests of a batch, decided in arrival order, each request's quotas all or
-- nothing against the state left by the requests before it.
-- KEYS: the batch's distinct keys, in order of first use.
-- ARGV: the mode (0: the server's time for all; 1: each request carries its time, 0 there
--   meaning the server's; 2, "simple": the server's time, one shape, every check on a key of
--   its own, request i's checks on keys i*n + 1 .. i*n + n); the number of definitions and
--   of shapes; the definitions, five values each (kind: 1 window, 2 GCRA, as in multi; then
--   the quota's four parameters); the shapes (cost, number of checks, that many definition
--   indices); then, except in mode 2, per request: shape index, its time (mode 1 only), one
--   key index per check.
-- Stores: each changed key once, with the formats of gcra_keys and window_keys.
-- Reply: flat, per request and check, the reply formats of gcra_keys (one integer) and
--   window_keys (three).
-- Assembled from batch_1_locals.lua window_tables.lua batch_2_loop.lua gcra_step.lua
--   batch_3_window.lua window_scan.lua batch_4_admit.lua window_widths.lua window_stamp.lua
--   batch_5_fresh_memo.lua window_fresh.lua batch_6_fresh_end.lua window_admit.lua
--   batch_7_write.lua window_retry.lua batch_8_refused.lua (src/rate_limit/redis/lua/, see
--   README.md there).
-- batch_1_locals.lua: library functions, read once.
-- Reads: nothing.
-- Leaves: call, num, fmt, unpk, pk, sub, byte.
local call, num, fmt = redis.call, tonumber, string.format
local unpk, pk, sub, byte = struct.unpack, struct.pack, string.sub, string.byte
-- window_tables.lua: constants of the window scripts, once per script call.
-- Reads: nothing.
-- Leaves: F[w] (the struct format of an unsigned little-endian integer of w bytes), P[w] =
--   256^w, and the per-tag format memos HEAD_FMTS and SLOT_FMTS (filled by window_scan).
local F = {'<I1', '<I2', '<I3', '<I4', '<I5', '<I6', '<I7'}
local P = {256, 65536, 16777216, 4294967296, 1099511627776, 281474976710656}
local HEAD_FMTS, SLOT_FMTS = {}, {}
-- batch_2_loop.lua: parses the definitions and shapes, reads every key (one MGET), and
-- opens the loop over the requests and, inside it, over the request's checks, and the
-- branch of a GCRA check.
-- Reads: ARGV, KEYS.
-- Leaves: D, S (the parsed definitions and shapes), state, clock, px, dirty, ndirty, text
--   (number formats memoised per batch), the memo of window_fresh's pieces (memo_stamp,
--   memo_cost, memo_q, and the pieces declared), reply, r, stage; in the request loop
--   (closed by batch_8_refused.lua) s, now, cost, n, all, nstaged; in the check loop k, q,
--   raw; in the GCRA branch T, B, BT.
local argv, keys = ARGV, KEYS
local client, simple = argv[1] == '1', argv[1] == '2'
local nq, ns = num(argv[2]), num(argv[3])
-- D: six values per definition at offset 6 (q - 1): kind, its four parameters, and the
-- GCRA capacity (interval times burst). S: the offset of each shape, then per shape: cost,
-- number of checks, the definitions' offsets in D.
local D, S = {}, {}
local a = 4
for q = 0, 6 * (nq - 1), 6 do
  D[q + 1], D[q + 2], D[q + 3] = num(argv[a]), num(argv[a + 1]), num(argv[a + 2])
  D[q + 4], D[q + 5], D[q + 6] = num(argv[a + 3]), num(argv[a + 4]), D[q + 2] * D[q + 3]
  a = a + 5
end
local o = ns
for s = 1, ns do
  local n = num(argv[a + 1])
  S[s], S[o + 1], S[o + 2] = o + 1, num(argv[a]), n
  for j = 1, n do S[o + 2 + j] = 6 * (num(argv[a + 1 + j]) - 1) end
  o = o + 2 + n
  a = a + 2 + n
end
local state = call('MGET', unpack(keys))
local clock = 0
if not client then
  local t = call('TIME')
  clock = t[1] * 1000000 + t[2]
end
local px, dirty, ndirty = {}, {}, 0
local text = {}
local memo_stamp, memo_cost, memo_q = -1, -1, -1
local ones_head, ones_slot, counts_tag, counts_head, counts_slot, fresh, high0
local reply, r = {}, 0
local stage = {}
local last, nreq, i = #argv, -1, 0
if simple then nreq = #keys / S[S[1] + 1] end
while true do
  local s, now = 1, clock
  if simple then
    if i == nreq then break end
  else
    if a > last then break end
    s = num(argv[a])
    if client then
      a = a + 1
      now = num(argv[a])
      if now == 0 then
        if clock == 0 then
          local t = call('TIME')
          clock = t[1] * 1000000 + t[2]
        end
        now = clock
      end
    end
    a = a + 1
  end
  local so = S[s]
  local cost, n = S[so], S[so + 1]
  local all, nstaged = true, 0
  for j = 0, n - 1 do
    local k, q = i * n + j + 1, S[so + 2 + j]
    if not simple then k = num(argv[a + j]) end
    local raw = state[k]
    if D[q + 1] == 2 then
      local T, B, BT = D[q + 2], D[q + 3], D[q + 6]
-- gcra_step.lua: one GCRA decision (the twin of gcra::decide).
-- Reads: raw (the key's state: the TAT as decimal text, or false), now, cost, T (the
--   interval), B (the burst), BT = B * T.
-- Leaves: used (microseconds of the bucket in use before), used_after (after admitting
--   cost), outcome: used_after if admitted (outcome >= 0 exactly then), minus the retry time
--   if refused, -2^52 minus used if the cost exceeds the burst (never admitted).
local used = 0
if raw then
  local tat = tonumber(raw) or 0
  if tat > now then used = tat - now end
end
local used_after = used + cost * T
local outcome = used_after
if cost > B then
  outcome = -4503599627370496 - used
elseif used_after > BT then
  outcome = BT - used_after
end
-- batch_3_window.lua: records a GCRA check's decision (stages its write), and opens the
-- branch of a window check.
-- Reads: gcra_step's outcome and used_after; now, cost, k, text, fmt, stage, nstaged, r.
-- Leaves: reply[r], all, a staged write if admitted; in the window branch, N, W.
      r = r + 1
      reply[r] = outcome
      if outcome < 0 then
        all = false
      elseif cost > 0 then
        local tat = now + used_after
        local tat_text = text[tat]
        if not tat_text then
          tat_text = fmt('%d', tat)
          text[tat] = tat_text
        end
        local ms = (used_after - used_after % 1000) / 1000 + 1
        local ttl_text = text[ms]
        if not ttl_text then
          ttl_text = fmt('%d', ms)
          text[ms] = ttl_text
        end
        stage[nstaged + 1], stage[nstaged + 2], stage[nstaged + 3] = k, tat_text, ttl_text
        nstaged = nstaged + 3
      end
    else
      local N, W = D[q + 2], D[q + 3]
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
-- batch_4_admit.lua: a window check's reset time, and the branch of an admission.
-- Reads: window_scan's first, nslots, first_at, count; W, now, N, cost, D, q.
-- Leaves: reset, and opens the blocks "admitted" and "cost > 0" (closed by
--   batch_7_write.lua), in which g and bound.
      local reset = 0
      if first <= nslots then reset = first_at + W - now end
      if cost <= N and count + cost <= N then
        if cost > 0 then
          local g, bound = D[q + 4], D[q + 5]
-- window_widths.lua: the widths of a window state written for the quota.
-- Reads: P, N (limit), W (window), g (granularity).
-- Leaves: wt0 (bytes of a slot's time), wc0 (bytes of a count, when counts are stored),
--   M0 = 256^wt0 >= W + g.
local wt0, wc0 = 1, 1
while P[wt0] < W + g do wt0 = wt0 + 1 end
while P[wc0] <= N do wc0 = wc0 + 1 end
local M0 = P[wt0]
-- window_stamp.lua: the time an admission at now is recorded at (window::stamp): now
-- rounded up to the granularity.
-- Reads: now, g.
-- Leaves: stamp.
local stamp = now
if g > 1 then
  local offset = now % g
  if offset < 0 then offset = offset + g elseif offset >= g then offset = offset - g end
  if offset > 0 then stamp = now - offset + g end
end
-- batch_5_fresh_memo.lua: opens the block rebuilding window_fresh's pieces only when the
-- time, cost or quota differ from the last ones built (closed by batch_6_fresh_end.lua).
-- Reads: stamp, cost, q, memo_stamp, memo_cost, memo_q.
-- Leaves: memo_stamp, memo_cost, memo_q (updated).
          if stamp ~= memo_stamp or cost ~= memo_cost or q ~= memo_q then
            memo_stamp, memo_cost, memo_q = stamp, cost, q
-- window_fresh.lua: the pieces of a window state written at stamp with cost.
-- Reads: pk, F, wt0, wc0, M0, stamp, cost.
-- Assigns (the script declares them, so that a batch can keep them across keys): high0
--   (the high part of stamp), counts_tag (the tag of the quota's form with counts of wc0
--   bytes), and for cost 1 ones_head, ones_slot (tag and high part, and the new slot, of a
--   state without counts) and fresh (the state holding only the new slot). counts_head is
--   left nil: window_admit builds the pieces with counts (and, for another cost, fresh) when
--   a decision needs them (rare), which saves every other decision their packing.
high0 = pk(F[7 - wt0], (stamp - stamp % M0) / M0)
counts_tag = 112 + 16 * wt0 + wc0
counts_head, fresh = nil, nil
if cost == 1 then
  ones_head = string.char(112 + 16 * wt0) .. high0
  ones_slot = pk(F[wt0], stamp % M0)
  fresh = ones_head .. ones_slot
end
-- batch_6_fresh_end.lua: closes the block of batch_5_fresh_memo.lua.
-- Reads: nothing. Leaves: nothing.
          end
-- window_admit.lua: the new window state after admitting cost at stamp (window::admit).
-- Reads: window_scan's variables, raw, cost, stamp, bound (most slots kept), wt0, wc0, P, F,
--   pk, sub, unpk, SLOT_FMTS, M0, high0, and window_fresh's pieces (builds counts_head,
--   counts_slot and, for a cost other than 1, fresh, when a decision needs them and they are
--   not built yet).
-- Leaves: value (the new state) and newest_after (the time of its newest slot).
local live = nslots - first + 1
local merge = live > 0 and stamp <= newest
local drop = live - bound
if not merge then drop = drop + 1 end
local kept = count + cost
if drop > 0 then
  kept = kept - first_count
  for j = first + 1, first + drop - 1 do
    if wc > 0 then
      local _, c = unpk(SLOT_FMTS[tag], raw, head_len + (j - 1) * slot_len + 1)
      kept = kept - c
    else
      kept = kept - 1
    end
  end
else
  drop = 0
end
local from, value, newest_after = first + drop, nil, stamp
local p = head_len + (from - 1) * slot_len + 1
if not counts_head and (cost ~= 1 or tag == counts_tag) then
  counts_head = string.char(counts_tag) .. high0
  counts_slot = pk(F[wt0] .. sub(F[wc0], 2), stamp % M0, cost)
  if cost ~= 1 then fresh = counts_head .. pk(F[wc0], cost) .. counts_slot end
end
if merge then newest_after = newest end
if from > nslots then
  value = fresh
elseif tag == counts_tag then
  if merge then
    value = sub(raw, 1, 8 - wt) .. pk(F[wc], kept) .. sub(raw, p, len - wc) .. pk(F[wc], newest_count + cost)
  else
    value = counts_head .. pk(F[wc], kept) .. sub(raw, p) .. counts_slot
  end
elseif tag == counts_tag - wc0 and cost == 1 and not merge then
  value = ones_head .. sub(raw, p) .. ones_slot
else
  -- Another form: re-encode the kept slots (with the new admission) in the quota's form.
  local ts, cs, n = {}, {}, 0
  for j = from, nslots do
    local q = head_len + (j - 1) * slot_len + 1
    local t, c = unpk(F[wt], raw, q), 1
    if wc > 0 then c = unpk(F[wc], raw, q + wt) end
    n = n + 1
    ts[n], cs[n] = newest - (newest - t) % M, c
  end
  if merge then
    cs[n] = cs[n] + cost
  else
    n = n + 1
    ts[n], cs[n] = stamp, cost
  end
  -- Only a clock stepping back (the newest slot ahead of now) across a quota change can span
  -- M0 or more: the times are then written wider. Slots more than 2^48 µs (8.9 years) older
  -- than the newest, which only a clock stepping back by more than that could keep, are
  -- forgotten.
  local s, ones, wc_new, wt_new = 1, true, 0, wt0
  while P[wt_new] <= newest_after - ts[s] and wt_new < 6 do wt_new = wt_new + 1 end
  while P[wt_new] <= newest_after - ts[s] do
    kept = kept - cs[s]
    s = s + 1
  end
  for j = s, n do
    if cs[j] ~= 1 then ones = false end
  end
  if not ones then
    wc_new = wc0
    while P[wc_new] <= kept do wc_new = wc_new + 1 end
  end
  local M_new = P[wt_new]
  local parts = {string.char(112 + 16 * wt_new + wc_new), pk(F[7 - wt_new], (newest_after - newest_after % M_new) / M_new)}
  if wc_new > 0 then parts[3] = pk(F[wc_new], kept) end
  for j = s, n do
    parts[#parts + 1] = pk(F[wt_new], ts[j] % M_new)
    if wc_new > 0 then parts[#parts + 1] = pk(F[wc_new], cs[j]) end
  end
  value = table.concat(parts)
end
-- batch_7_write.lua: stages an admitted window check's write, records the admission, and
-- opens the branch of a refusal (closed by batch_8_refused.lua).
-- Reads: window_admit's value and newest_after; first, nslots, stamp, W, now, N, count,
--   cost, k, text, fmt, stage, nstaged, r, reset.
-- Leaves: reset (updated when the only live slot is the new one), reply[r + 1 .. r + 3].
          if first > nslots then reset = stamp + W - now end
          local ttl = newest_after + W - now
          local ms = (ttl - ttl % 1000) / 1000 + 1
          local ttl_text = text[ms]
          if not ttl_text then
            ttl_text = fmt('%d', ms)
            text[ms] = ttl_text
          end
          stage[nstaged + 1], stage[nstaged + 2], stage[nstaged + 3] = k, value, ttl_text
          nstaged = nstaged + 3
        end
        reply[r + 1], reply[r + 2], reply[r + 3] = N - count - cost, reset, 0
      else
-- window_retry.lua: for a refused window request, the units left and the wait.
-- Reads: window_scan's variables, raw, unpk, F, SLOT_FMTS, N, W, now, cost, reset (the
--   time until the oldest live slot leaves).
-- Leaves: remaining (units left, >= 0), wait (microseconds until cost fits; -1: never).
local remaining = N - count
if remaining < 0 then remaining = 0 end
local wait = -1
if cost <= N then
  local excess, acc = count + cost - N, 0
  wait = reset
  if wc == 0 then
    local j = first + excess - 1
    if j <= nslots then
      local t = unpk(F[wt], raw, head_len + (j - 1) * wt + 1)
      wait = newest - (newest - t) % M + W - now
    end
  else
    for j = first, nslots do
      local t, c = unpk(SLOT_FMTS[tag], raw, head_len + (j - 1) * slot_len + 1)
      acc = acc + c
      if acc >= excess then
        wait = newest - (newest - t) % M + W - now
        break
      end
    end
  end
end
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
