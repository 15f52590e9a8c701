
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
local HF, FS = {}, {}

local wt0, wc0 = 1, 1
while P[wt0] < W + g do wt0 = wt0 + 1 end
while P[wc0] <= N do wc0 = wc0 + 1 end
local M0 = P[wt0]

local stamp = now
if g > 1 then
  local rr = now % g
  if rr < 0 then rr = rr + g elseif rr >= g then rr = rr - g end
  if rr > 0 then stamp = now - rr + g end
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

local m, total, first, gone, at1, c1 = 0, 0, 1, 0, 0, 0
local tag, wt, wc, hz, ss, M, newest, lastc = -1, 1, 0, 0, 0, 1, 0, 0
local len = raw and #raw or 0
if len > 1 then
  tag = byte(raw, 1)
  local t = tag - 128
  wc = t % 16
  wt = (t - wc) / 16 + 1
  hz, ss = 8 - wt + wc, wt + wc
  if t >= 0 and wt <= 6 and wc <= 4 and len > hz and (len - hz) % ss == 0 then
    m, M = (len - hz) / ss, P[wt]
    local hf = HF[tag]
    if not hf then
      local c = wc > 0 and sub(F[wc], 2) or ''
      hf = F[7 - wt] .. c .. sub(F[wt], 2) .. c
      HF[tag], FS[tag] = hf, F[wt] .. c
    end
    local high, tm
    if wc > 0 then
      high, total, at1, c1 = unpk(hf, raw, 2)
      tm, lastc = unpk(FS[tag], raw, len - ss + 1)
    else
      high, at1 = unpk(hf, raw, 2)
      total, c1, lastc = m, 1, 1
      tm = unpk(F[wt], raw, len - wt + 1)
    end
    newest = high * M + tm
    at1 = newest - (newest - at1) % M
    while at1 + W <= now do
      gone = gone + c1
      first = first + 1
      if first > m then break end
      if wc > 0 then
        at1, c1 = unpk(FS[tag], raw, hz + (first - 1) * ss + 1)
      else
        at1 = unpk(F[wt], raw, hz + (first - 1) * wt + 1)
      end
      at1 = newest - (newest - at1) % M
    end
  else
    tag, wc = -1, 0
  end
end
local count = total - gone

  local b = 0
  if first <= m then b = at1 + W - now end
  if cost <= N and count + cost <= N then
    if cost > 0 then

local live = m - first + 1
local merge = live > 0 and stamp <= newest
local drop = live - bound
if not merge then drop = drop + 1 end
local kept = count + cost
if drop > 0 then
  kept = kept - c1
  for j = first + 1, first + drop - 1 do
    if wc > 0 then
      local _, c = unpk(FS[tag], raw, hz + (j - 1) * ss + 1)
      kept = kept - c
    else
      kept = kept - 1
    end
  end
else
  drop = 0
end
local from, value, nn = first + drop, nil, stamp
local p = hz + (from - 1) * ss + 1
if merge then nn = newest end
if from > m then
  value = fresh
elseif tag == counts_tag then
  if merge then
    value = sub(raw, 1, 8 - wt) .. pk(F[wc], kept) .. sub(raw, p, len - wc) .. pk(F[wc], lastc + cost)
  else
    value = counts_head .. pk(F[wc], kept) .. sub(raw, p) .. counts_slot
  end
elseif tag == counts_tag - wc0 and cost == 1 and not merge then
  value = ones_head .. sub(raw, p) .. ones_slot
else
  -- Another form: re-encode the kept slots (with the new admission) in the quota's form.
  local ts, cs, n = {}, {}, 0
  for j = from, m do
    local q = hz + (j - 1) * ss + 1
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
  local s, ones, w, v = 1, true, 0, wt0
  while P[v] <= nn - ts[s] and v < 6 do v = v + 1 end
  while P[v] <= nn - ts[s] do
    kept = kept - cs[s]
    s = s + 1
  end
  for j = s, n do
    if cs[j] ~= 1 then ones = false end
  end
  if not ones then
    w = wc0
    while P[w] <= kept do w = w + 1 end
  end
  local Mv = P[v]
  local parts = {string.char(112 + 16 * v + w), pk(F[7 - v], (nn - nn % Mv) / Mv)}
  if w > 0 then parts[3] = pk(F[w], kept) end
  for j = s, n do
    parts[#parts + 1] = pk(F[v], ts[j] % Mv)
    if w > 0 then parts[#parts + 1] = pk(F[w], cs[j]) end
  end
  value = table.concat(parts)
end

      if first > m then b = stamp + W - now end
      if nn == stamp then
        call('SET', keys[i], value, 'PX', stamp_ms)
      else
        ttl = nn + W - now
        call('SET', keys[i], value, 'PX', (ttl - ttl % 1000) / 1000 + 1)
      end
    end
    reply[r + 1], reply[r + 2], reply[r + 3] = N - count - cost, b, 0
  else

local rem = N - count
if rem < 0 then rem = 0 end
local wait = -1
if cost <= N then
  local excess, acc = count + cost - N, 0
  wait = b
  if wc == 0 then
    local j = first + excess - 1
    if j <= m then
      local t = unpk(F[wt], raw, hz + (j - 1) * wt + 1)
      wait = newest - (newest - t) % M + W - now
    end
  else
    for j = first, m do
      local t, c = unpk(FS[tag], raw, hz + (j - 1) * ss + 1)
      acc = acc + c
      if acc >= excess then
        wait = newest - (newest - t) % M + W - now
        break
      end
    end
  end
end

    reply[r + 1], reply[r + 2], reply[r + 3] = -1 - rem, b, wait
  end
  r = r + 3
end
return reply
