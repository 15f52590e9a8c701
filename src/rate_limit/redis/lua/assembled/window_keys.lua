
local call, keys = redis.call, KEYS
local unpk, pk, sub, byte = struct.unpack, struct.pack, string.sub, string.byte
local cost, now = tonumber(ARGV[1]), tonumber(ARGV[2])
if now == 0 then
  local t = call('TIME')
  now = t[1] * 1000000 + t[2]
end
local state = call('MGET', unpack(keys))
local reply = {}

local N, W = tonumber(ARGV[3]), tonumber(ARGV[4])
local g, bound = tonumber(ARGV[5]), tonumber(ARGV[6])

local F = {'<I1', '<I2', '<I3', '<I4', '<I5', '<I6', '<I7'}
local P = {256, 65536, 16777216, 4294967296, 1099511627776, 281474976710656}
local HEAD_FMTS, SLOT_FMTS = {}, {}

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

local ones_head, ones_slot, counts_tag, counts_head, counts_slot, fresh

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

-- The TTL of a state whose newest slot is the one added now (all but merges), formatted once.
local ttl = stamp + W - now
local stamp_ms = string.format('%d', (ttl - ttl % 1000) / 1000 + 1)
local r = 0
for i = 1, #keys do
  local raw = state[i]

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
      if newest_after == stamp then
        call('SET', keys[i], value, 'PX', stamp_ms)
      else
        ttl = newest_after + W - now
        call('SET', keys[i], value, 'PX', (ttl - ttl % 1000) / 1000 + 1)
      end
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
  end
  r = r + 3
end
return reply
