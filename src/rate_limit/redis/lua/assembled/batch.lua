
local call, num, fmt = redis.call, tonumber, string.format
local unpk, pk, sub, byte = struct.unpack, struct.pack, string.sub, string.byte

local F = {'<I1', '<I2', '<I3', '<I4', '<I5', '<I6', '<I7'}
local P = {256, 65536, 16777216, 4294967296, 1099511627776, 281474976710656}
local HEAD_FMTS, SLOT_FMTS = {}, {}

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
local ones_head, ones_slot, counts_tag, counts_head, counts_slot, fresh
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

      local reset = 0
      if first <= nslots then reset = first_at + W - now end
      if cost <= N and count + cost <= N then
        if cost > 0 then
          local g, bound = D[q + 4], D[q + 5]

local wt0, wc0 = 1, 1
while P[wt0] < W + g do wt0 = wt0 + 1 end
while P[wc0] <= N do wc0 = wc0 + 1 end
local M0 = P[wt0]

local stamp = now
if g > 1 then
  local offset = now % g
  if offset < 0 then offset = offset + g elseif offset >= g then offset = offset - g end
  if offset > 0 then stamp = now - offset + g end
end

          if stamp ~= memo_stamp or cost ~= memo_cost or q ~= memo_q then
            memo_stamp, memo_cost, memo_q = stamp, cost, q

local high0 = pk(F[7 - wt0], (stamp - stamp % M0) / M0)
ones_head = string.char(112 + 16 * wt0) .. high0
ones_slot = pk(F[wt0], stamp % M0)
counts_tag = 112 + 16 * wt0 + wc0
counts_head = string.char(counts_tag) .. high0
counts_slot = pk(F[wt0] .. sub(F[wc0], 2), stamp % M0, cost)
if cost == 1 then
  fresh = ones_head .. ones_slot
else
  fresh = counts_head .. pk(F[wc0], cost) .. counts_slot
end

          end

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
