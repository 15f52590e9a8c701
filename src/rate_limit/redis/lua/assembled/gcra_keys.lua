
local call, keys = redis.call, KEYS
local unpk, pk, sub, byte = struct.unpack, struct.pack, string.sub, string.byte
local cost, now = tonumber(ARGV[1]), tonumber(ARGV[2])
if now == 0 then
  local t = call('TIME')
  now = t[1] * 1000000 + t[2]
end
local state = call('MGET', unpack(keys))
local reply = {}

local T, B = tonumber(ARGV[3]), tonumber(ARGV[4])
local BT, inc = B * T, cost * T
-- The state and TTL of a key whose bucket was full (the common case), formatted once.
local fresh = string.format('%d', now + inc)
local fresh_ms = string.format('%d', (inc - inc % 1000) / 1000 + 1)
for i = 1, #keys do
  local raw = state[i]

local d = 0
if raw then
  local tat = tonumber(raw) or 0
  if tat > now then d = tat - now end
end
local nd = d + cost * T
local v = nd
if cost > B then
  v = -4503599627370496 - d
elseif nd > BT then
  v = BT - nd
end

  reply[i] = v
  if v < 0 or cost == 0 then
  elseif d == 0 then
    call('SET', keys[i], fresh, 'PX', fresh_ms)
  else
    call('SET', keys[i], now + nd, 'PX', (nd - nd % 1000) / 1000 + 1)
  end
end
return reply
