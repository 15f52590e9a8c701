-- gcra_one: one GCRA quota for one key: a single request decided alone (batching off, or
-- no other request waiting). The decision of gcra_keys for one key, without its loop, its
-- MGET and its reply table, which cost Redis more than the decision itself.
-- KEYS[1]: the key. ARGV: cost, now (microseconds; 0: the server's TIME), interval
--   (microseconds per unit), burst (units).
-- Stores: when admitted with cost > 0, the key's new TAT (theoretical arrival time,
--   microseconds) as decimal text, expiring (PX, rounded up) when the bucket is full again:
--   the state gcra_keys writes.
-- Reply: one integer, as gcra_keys replies per key: admitted, the microseconds of the bucket
--   in use (>= 0); refused, minus the retry time (<= -1); refused because the cost exceeds
--   the burst, -2^52 minus the microseconds in use.
-- Assembled from clock_prelude.lua gcra_one_1_read.lua gcra_step.lua gcra_one_2_write.lua
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
-- gcra_one_1_read.lua: the quota and the key's state, after clock_prelude.lua.
-- Reads: KEYS[1], ARGV[3] interval, ARGV[4] burst, call.
-- Leaves: T, B, BT, raw (the key's state: the TAT as decimal text, or false).
local T, B = tonumber(ARGV[3]), tonumber(ARGV[4])
local BT = B * T
local raw = call('GET', KEYS[1])
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
-- gcra_one_2_write.lua: writes the key's new state when admitted, and replies.
-- Reads: gcra_step's outcome, used_after; KEYS[1], cost, now, fmt.
-- Leaves: the reply.
if outcome >= 0 and cost > 0 then
  call('SET', KEYS[1], fmt('%d', now + used_after), 'PX', fmt('%d', (used_after - used_after % 1000) / 1000 + 1))
end
return outcome
