-- release: undoes exactly one admission that reserve.lua made (its request was refused on
--   another slot), and never anyone else's.
-- KEYS[1]: the key. ARGV: now (microseconds; 0: the server's TIME), cost, whether the key
--   had a value before (1 or 0), that value (empty if none), the value reserve wrote, then
--   the quota's five definition values (multi's).
-- Stores: if the key still holds exactly what reserve wrote (nothing happened since: the
--   usual case), the value before, byte for byte (or no key, if there was none), expiring
--   when that state is empty again. Otherwise, if admissions came since:
--   * window: the slot the admission went to (the newest slot of what reserve wrote) loses
--     cost units (the slot goes if none are left); if that slot is gone or holds fewer
--     units, nothing is changed (the admission has left the window already);
--   * GCRA: with tat0 the TAT before, tat_r the one written and cur the current one, if
--     cur >= tat_r the TAT becomes min(cur, max(tat0, now) + cur - tat_r), which is never
--     below the TAT the other admissions alone would have left; if cur < tat_r (the key
--     expired and began again) nothing is changed.
-- Reply: 1 restored, 2 a GCRA TAT lowered, 3 a window slot lowered, 0 nothing changed.
local call, key = redis.call, KEYS[1]
local unpk, pk, byte = struct.unpack, struct.pack, string.byte
local now, cost = tonumber(ARGV[1]), tonumber(ARGV[2])
if now == 0 then
  local t = call('TIME')
  now = t[1] * 1000000 + t[2]
end
local had, old, written = ARGV[3] == '1', ARGV[4], ARGV[5]
local gcra, W = tonumber(ARGV[6]) == 2, tonumber(ARGV[8])
local F = {'<I1', '<I2', '<I3', '<I4', '<I5', '<I6', '<I7'}
local P = {256, 65536, 16777216, 4294967296, 1099511627776, 281474976710656}
-- A window state's form and slots (times and counts, oldest first), or nil if unreadable.
local function slots(raw)
  if not raw or #raw < 2 then return nil end
  local t = byte(raw, 1) - 128
  if t < 0 then return nil end
  local wc = t % 16
  local wt = (t - wc) / 16 + 1
  local head_len, slot_len, len = 8 - wt + wc, wt + wc, #raw
  if wt > 6 or wc > 4 or len <= head_len or (len - head_len) % slot_len ~= 0 then return nil end
  local M = P[wt]
  local newest = unpk(F[7 - wt], raw, 2) * M + unpk(F[wt], raw, len - slot_len + 1)
  local ts, cs = {}, {}
  for j = 1, (len - head_len) / slot_len do
    local q = head_len + (j - 1) * slot_len + 1
    ts[j] = newest - (newest - unpk(F[wt], raw, q)) % M
    cs[j] = 1
    if wc > 0 then cs[j] = unpk(F[wc], raw, q + wt) end
  end
  return wt, wc, ts, cs
end
-- Writes a state that is empty at `empty` (microseconds), or deletes the key if that is past.
local function put(value, empty)
  local ttl = empty - now
  if ttl <= 0 then
    call('DEL', key)
  else
    call('SET', key, value, 'PX', (ttl - ttl % 1000) / 1000 + 1)
  end
end
local function empty_at(raw)
  if gcra then return tonumber(raw) or 0 end
  local _, _, ts = slots(raw)
  if not ts then return 0 end
  return ts[#ts] + W
end
local cur = call('GET', key)
if cur == written then
  if had then put(old, empty_at(old)) else call('DEL', key) end
  return 1
end
if not cur then return 0 end
if gcra then
  local c, tat_r, tat0 = tonumber(cur), tonumber(written), 0
  if had then tat0 = tonumber(old) or 0 end
  if not c or not tat_r or c < tat_r then return 0 end
  local base = tat0
  if now > base then base = now end
  local tat = base + c - tat_r
  if tat > c then tat = c end
  put(string.format('%d', tat), tat)
  return 2
end
local _, _, wts = slots(written)
local wt, wc, ts, cs = slots(cur)
if not wts or not ts then return 0 end
local stamp, at = wts[#wts], nil
for j = 1, #ts do
  if ts[j] == stamp then at = j end
end
if not at or cs[at] < cost then return 0 end
cs[at] = cs[at] - cost
local kt, kc, total = {}, {}, 0
for j = 1, #ts do
  if cs[j] > 0 then
    kt[#kt + 1], kc[#kc + 1] = ts[j], cs[j]
    total = total + cs[j]
  end
end
if #kt == 0 then
  call('DEL', key)
  return 3
end
local M, newest = P[wt], kt[#kt]
local parts = {string.char(112 + 16 * wt + wc), pk(F[7 - wt], (newest - newest % M) / M)}
if wc > 0 then parts[3] = pk(F[wc], total) end
for j = 1, #kt do
  parts[#parts + 1] = pk(F[wt], kt[j] % M)
  if wc > 0 then parts[#parts + 1] = pk(F[wc], kc[j]) end
end
put(table.concat(parts), newest + W)
return 3
