-- window_keys: one window quota for one or more distinct keys, each decided on its own.
-- KEYS: the keys. ARGV: cost, now (microseconds; 0: the server's TIME), limit, window
--   (microseconds), granularity (microseconds; 1: exact), slot bound (most slots kept).
-- Stores: per admitted key (cost > 0), its window state (the binary form of the module docs
--   of src/rate_limit/redis/scripts.rs), expiring (PX, rounded up) when the window is empty.
-- Reply: three integers per key: remaining (-1 - remaining if refused), reset (microseconds
--   until a unit comes back), retry (microseconds; 0 if admitted, -1: never).
-- Assembled from clock_prelude.lua keys_prelude.lua window_keys_1_args.lua
--   window_tables.lua window_widths.lua window_stamp.lua window_keys_2_pieces.lua
--   window_fresh.lua window_keys_3_loop.lua window_scan.lua window_keys_4_decide.lua
--   window_admit.lua window_keys_5_write.lua window_retry.lua window_keys_6_refused.lua
--   (src/rate_limit/redis/lua/, see README.md there).
-- clock_prelude.lua: the start of every script deciding one request (gcra_keys, gcra_one,
-- window_keys, window_one, multi, reserve).
-- Reads: ARGV[1] the cost, ARGV[2] now in microseconds (0: the server's TIME).
-- Leaves: call, fmt, unpk, pk, sub, byte (library functions read once), cost, now.
-- A text-to-number conversion costs Redis about 0.1 us (and a number passed to call about
-- 0.2-0.3 us: the scripts pass fmt('%d', n) instead), so the usual cost and clock, '1' and
-- '0', are compared (one pointer compare), not converted.
local call, fmt = redis.call, string.format
local unpk, pk, sub, byte = struct.unpack, struct.pack, string.sub, string.byte
local cost, now = 1, 0
if ARGV[1] ~= '1' then cost = tonumber(ARGV[1]) end
if ARGV[2] ~= '0' then now = tonumber(ARGV[2]) end
if now == 0 then
  local t = call('TIME')
  now = t[1] * 1000000 + t[2]
end
-- keys_prelude.lua: every key's state, for the per-key scripts (gcra_keys, window_keys, multi,
-- reserve), after clock_prelude.lua.
-- Reads: KEYS (the keys to decide), call.
-- Leaves: keys, state (every key's value, one MGET; false for a missing key), reply = {}.
local keys = KEYS
local state = call('MGET', unpack(keys))
local reply = {}
-- window_keys_1_args.lua: the quota.
-- Reads: ARGV[3] limit, ARGV[4] window, ARGV[5] granularity, ARGV[6] slot bound.
-- Leaves: N, W, g, bound.
local N, W = tonumber(ARGV[3]), tonumber(ARGV[4])
local g, bound = tonumber(ARGV[5]), tonumber(ARGV[6])
-- window_tables.lua: constants of the window scripts, once per script call.
-- Reads: nothing.
-- Leaves: F[w] (the struct format of an unsigned little-endian integer of w bytes), P[w] =
--   256^w, and the per-tag format memos HEAD_FMTS and SLOT_FMTS (filled by window_scan).
local F = {'<I1', '<I2', '<I3', '<I4', '<I5', '<I6', '<I7'}
local P = {256, 65536, 16777216, 4294967296, 1099511627776, 281474976710656}
local HEAD_FMTS, SLOT_FMTS = {}, {}
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
-- window_keys_2_pieces.lua: declares the pieces window_fresh.lua assigns.
-- Reads: nothing.
-- Leaves: ones_head, ones_slot, counts_tag, counts_head, counts_slot, fresh, high0 (nil).
local ones_head, ones_slot, counts_tag, counts_head, counts_slot, fresh, high0
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
-- window_keys_3_loop.lua: the TTL of a state whose newest slot is the one added now, and the
-- loop over the keys.
-- Reads: stamp, W, now, keys, state, fmt.
-- Leaves: ttl, stamp_ms (that TTL in milliseconds, formatted once), r (reply values so far),
--   and, inside the loop (closed by window_keys_6_refused.lua), i and raw.
-- The TTL of a state whose newest slot is the one added now (all but merges), formatted once.
local ttl = stamp + W - now
local stamp_ms = fmt('%d', (ttl - ttl % 1000) / 1000 + 1)
local r = 0
for i = 1, #keys do
  local raw = state[i]
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
-- window_keys_4_decide.lua: the reset time, and the branch of an admitted request.
-- Reads: window_scan's first, nslots, first_at, count; W, now, N, cost.
-- Leaves: reset (microseconds until the oldest live slot leaves; 0 if none), and opens the
--   blocks "admitted" and "cost > 0" (closed by window_keys_5_write.lua).
  local reset = 0
  if first <= nslots then reset = first_at + W - now end
  if cost <= N and count + cost <= N then
    if cost > 0 then
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
-- window_keys_5_write.lua: writes an admitted key's new state, records the admission, and
-- opens the branch of a refused request (closed by window_keys_6_refused.lua).
-- Reads: window_admit's value and newest_after; first, nslots, stamp, stamp_ms, W, now, N,
--   count, cost, keys, i, r, reset, fmt.
-- Leaves: reset (updated when the only live slot is the new one), reply[r + 1 .. r + 3].
      if first > nslots then reset = stamp + W - now end
      if newest_after == stamp then
        call('SET', keys[i], value, 'PX', stamp_ms)
      else
        ttl = newest_after + W - now
        call('SET', keys[i], value, 'PX', fmt('%d', (ttl - ttl % 1000) / 1000 + 1))
      end
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
-- window_keys_6_refused.lua: records a refusal, closes the loop and replies.
-- Reads: window_retry's remaining and wait; reset, r.
-- Leaves: the reply.
    reply[r + 1], reply[r + 2], reply[r + 3] = -1 - remaining, reset, wait
  end
  r = r + 3
end
return reply
