
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
local BT, cost_us = B * T, cost * T
-- The state and TTL of a key whose bucket was full (the common case), formatted once.
local fresh = string.format('%d', now + cost_us)
local fresh_ms = string.format('%d', (cost_us - cost_us % 1000) / 1000 + 1)
for i = 1, #keys do
  local raw = state[i]

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

  reply[i] = outcome
  if outcome < 0 or cost == 0 then
  elseif used == 0 then
    call('SET', keys[i], fresh, 'PX', fresh_ms)
  else
    call('SET', keys[i], now + used_after, 'PX', (used_after - used_after % 1000) / 1000 + 1)
  end
end
return reply
