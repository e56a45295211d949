-- Acknowledge, renew the lease, promote due delayed messages, lease a batch.
--
-- KEYS: inflight, consumers, deliveries, landings, delayed, source lists in pop order.
-- ARGV: lease id, lease seconds, max count, tag prefix, promote limit (0: skip),
-- adopt landing lists (1/0), number of acked tags A, then A acked tags, then the
-- delivery counters to drop with them.
--
-- Returns ``{runs, payloads, reaped, next ETA or '', TIME seconds, TIME micros,
-- errors}``: runs = source list, count, ... in payload order; the i-th payload's tag
-- is prefix .. i; reaped = i, times reaped, ... for the payloads the reaper gave back
-- before. The reply is kept this small because parsing it is most of a fetch's
-- client-side cost.
-- Runs after: helpers.lua, promote.lua (prepended by scripts.py).

-- Acks first: HDEL never fails for lack of memory, and it frees some.
local acked = tonumber(ARGV[7])
if acked > 0 then
  hdel_range(KEYS[1], 8, 7 + acked)
  if #ARGV > 7 + acked then hdel_range(KEYS[3], 8 + acked, #ARGV) end
end
local now, t = server_now()
-- The first write that needs memory: under maxmemory it fails here, before anything
-- is popped.
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
local errors, next_due = {}, ''
if tonumber(ARGV[5]) > 0 then
  promote(KEYS[5], now, ARGV[5], errors)
  local first = redis.call('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')
  if first[2] then next_due = first[2] end
end
local runs, payloads, reaped, entries = {}, {}, {}, {}
local counted = redis.call('EXISTS', KEYS[3]) == 1
local function add(source, payload)
  local n = #payloads + 1
  payloads[n] = payload
  if counted then
    local times = redis.call('HGET', KEYS[3], redis.sha1hex(payload))
    if times then
      reaped[#reaped + 1] = n
      reaped[#reaped + 1] = tonumber(times)
    end
  end
  if runs[#runs - 1] == source then
    runs[#runs] = runs[#runs] + 1
  else
    runs[#runs + 1] = source
    runs[#runs + 1] = 1
  end
  return n
end
-- Tags under this prefix exist: an earlier run of this call leased them and its reply
-- was lost (the client asks again with the same prefix, or redis-py re-sent the call
-- after a timeout). Answer with those messages again: leasing more under the same
-- tags would overwrite them, and leaving them would strand them with a live consumer.
local entry = redis.call('HGET', KEYS[1], ARGV[4] .. 1)
if entry then
  while entry do
    local source, payload = unpack_entry(entry, 1)
    add(source, payload)
    entry = redis.call('HGET', KEYS[1], ARGV[4] .. (#payloads + 1))
  end
  return {runs, payloads, reaped, next_due, t[1], t[2], errors}
end
local function lease(source, items, from, to, step)
  local prefix = string.len(source) .. ':' .. source
  for j = from, to, step do
    local n = add(source, items[j])
    entries[#entries + 1] = ARGV[4] .. n
    entries[#entries + 1] = prefix .. items[j]
  end
end
-- Landing lists hold what a BLMOVE took and no script adopted yet; the client asks
-- for this only after a blocking call, so a busy consumer skips it.
if ARGV[6] == '1' then
  local landings = redis.call('HGETALL', KEYS[4])
  for i = 1, #landings, 2 do
    local items = redis.call('LRANGE', landings[i], 0, -1)
    if #items > 0 then
      redis.call('DEL', landings[i])
      lease(landings[i + 1], items, #items, 1, -1)  -- oldest first
    end
  end
end
local want = tonumber(ARGV[3])
for i = 6, #KEYS do
  if #payloads >= want then break end
  local got = redis.pcall('RPOP', KEYS[i], want - #payloads)
  if failed(got) then
    errors[#errors + 1] = KEYS[i] .. ': ' .. got.err
  elseif got then
    lease(KEYS[i], got, 1, #got, 1)
  end
end
for i = 1, #entries, 1000 do
  redis.call('HSET', KEYS[1], unpack(entries, i, math.min(i + 999, #entries)))
end
return {runs, payloads, reaped, next_due, t[1], t[2], errors}
