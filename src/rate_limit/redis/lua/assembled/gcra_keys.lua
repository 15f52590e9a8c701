-- gcra_keys: one GCRA quota for one or more distinct keys, each decided on its own (a single
-- request, or a batch of single-quota requests on keys of their own).
-- KEYS: the keys. ARGV: cost, now (microseconds; 0: the server's TIME), interval
--   (microseconds per unit), burst (units).
-- Stores: per admitted key (cost > 0), its new TAT (theoretical arrival time, microseconds)
--   as decimal text, expiring (PX, rounded up) when the bucket is full again.
-- Reply: one integer per key: admitted, the microseconds of the bucket in use (>= 0);
--   refused, minus the retry time (<= -1); refused because the cost exceeds the burst,
--   -2^52 minus the microseconds in use.
-- Assembled from clock_prelude.lua keys_prelude.lua gcra_keys_1_args.lua gcra_step.lua
--   gcra_keys_2_write.lua (src/rate_limit/redis/lua/, see README.md there).
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
-- gcra_keys_1_args.lua: the quota, the state of a key whose bucket was full, and the loop
-- over the keys.
-- Reads: ARGV[3] interval, ARGV[4] burst, cost, now, keys, state, fmt.
-- Leaves: T, B, BT, cost_us, fresh and fresh_ms (the new state and TTL of a key whose
--   bucket was full, formatted once), and, inside the loop (closed by
--   gcra_keys_2_write.lua), i and raw.
local T, B = tonumber(ARGV[3]), tonumber(ARGV[4])
local BT, cost_us = B * T, cost * T
-- The state and TTL of a key whose bucket was full (the common case), formatted once.
local fresh = fmt('%d', now + cost_us)
local fresh_ms = fmt('%d', (cost_us - cost_us % 1000) / 1000 + 1)
for i = 1, #keys do
  local raw = state[i]
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
-- gcra_keys_2_write.lua: records the key's decision, writes its new state, closes the loop
-- and replies.
-- Reads: gcra_step's outcome, used, used_after; i, keys, cost, now, fresh, fresh_ms, fmt.
-- Leaves: the reply.
  reply[i] = outcome
  if outcome < 0 or cost == 0 then
  elseif used == 0 then
    call('SET', keys[i], fresh, 'PX', fresh_ms)
  else
    call('SET', keys[i], fmt('%d', now + used_after), 'PX', fmt('%d', (used_after - used_after % 1000) / 1000 + 1))
  end
end
return reply
