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
