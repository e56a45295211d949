"""The Redis broker's Lua scripts: each one step that must be atomic.

Keys (besides the queue lists), all under ``key_prefix`` (default ``taskq:``)::

    consumers                          zset  lease id -> lease deadline
    inflight:<lease id>                hash  tag -> "<len>:<source list><payload>"
    landings:<lease id>                hash  landing list -> source list
    landing:<lease id>:<source list>   list  messages BLMOVE'd, not yet adopted
    deliveries                         hash  sha1(payload) -> times reaped
    delayed                            zset  "<32 hex><len>:<list><payload>" by ETA
    dlq                                list  JSON entries, oldest first

Scripts build per-consumer key names from the prefix, so the broker needs a
single Redis server (not Redis Cluster), like kombu's Redis transport. Redis does
not roll back the writes a script already made when a later command fails, so
commands on queue lists (which a user may have overwritten with another type) go
through ``pcall`` and are reported, never left half done.
"""

from __future__ import annotations

__all__ = ["DEAD_LETTER", "FETCH", "PROMOTE", "REAP", "REQUEUE", "REQUEUE_DEAD"]

# Shared by the scripts. Entries are "<len>:<list key><payload>" starting at `start`.
_HELPERS = r"""
local function unpack_entry(value, start)
  local colon = string.find(value, ':', start, true)
  local size = tonumber(string.sub(value, start, colon - 1))
  return string.sub(value, colon + 1, colon + size), string.sub(value, colon + size + 1)
end
local function failed(reply)
  return type(reply) == 'table' and reply.err ~= nil
end
local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000, t
end
local function hdel_range(key, from, to)
  for i = from, to, 1000 do
    redis.call('HDEL', key, unpack(ARGV, i, math.min(i + 999, to)))
  end
end
"""

# Moves up to `limit` due members of the delayed zset to their lists and returns how
# many it moved; appends to `errors`. The due members are the zset's lowest ranks
# (ZRANGEBYSCORE from -inf), so one ZREMRANGEBYRANK removes them all, O(log n + k),
# instead of a ZREM each. Each list gets its messages in multi-value LPUSHes (1,000
# values at most, under Lua's stack limit), earliest ETA first, so served first:
# consumers pop from the right. Order across lists is moot. A list that refuses them
# (a key of another type) keeps its members in the zset, due again in a minute, and
# is reported; the rest are promoted. Most of the cost is copying each member into
# Lua and cutting its payload out (string.sub); see docs/delayed.md for figures.
_PROMOTE = r"""
local function promote(zset, now, limit, errors)
  local due = redis.call('ZRANGEBYSCORE', zset, '-inf', now, 'LIMIT', 0, limit)
  if #due == 0 then return 0 end
  local lists, order = {}, {}
  for i = 1, #due do
    local dest, payload = unpack_entry(due[i], 33)
    local list = lists[dest]
    if not list then
      list = {payloads = {}, members = {}}
      lists[dest] = list
      order[#order + 1] = dest
    end
    list.payloads[#list.payloads + 1] = payload
    list.members[#list.members + 1] = i
  end
  local kept = {}
  for _, dest in ipairs(order) do
    local payloads = lists[dest].payloads
    for from = 1, #payloads, 1000 do
      local to = math.min(from + 999, #payloads)
      local reply = redis.pcall('LPUSH', dest, unpack(payloads, from, to))
      if failed(reply) then
        errors[#errors + 1] = dest .. ': ' .. reply.err
        local members = lists[dest].members
        for j = from, #members do kept[#kept + 1] = due[members[j]] end
        break
      end
    end
  end
  -- Kept members move past every promoted one (score now + 60 > now), so the promoted
  -- ones are exactly ranks 0 .. #due - #kept - 1.
  for _, member in ipairs(kept) do
    redis.call('ZADD', zset, now + 60, member)  -- retry in a minute
  end
  if #due > #kept then redis.call('ZREMRANGEBYRANK', zset, 0, #due - #kept - 1) end
  return #due - #kept
end
"""

#: Acknowledge, renew the lease, promote due delayed messages, lease a batch.
#:
#: KEYS: inflight, consumers, deliveries, landings, delayed, source lists in pop order.
#: ARGV: lease id, lease seconds, max count, tag prefix, promote limit (0: skip),
#: adopt landing lists (1/0), number of acked tags A, then A acked tags, then the
#: delivery counters to drop with them.
#:
#: Returns ``{runs, payloads, reaped, next ETA or '', TIME seconds, TIME micros,
#: errors}``: runs = source list, count, ... in payload order; the i-th payload's tag
#: is prefix .. i; reaped = i, times reaped, ... for the payloads the reaper gave back
#: before. The reply is kept this small because parsing it is most of a fetch's
#: client-side cost.
FETCH = (
    _HELPERS
    + _PROMOTE
    + r"""
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
"""
)

#: Promote due delayed messages only (what FETCH does first, without leasing), for a
#: caller that wants to move a large due batch in several short calls.
#:
#: KEYS: delayed. ARGV: limit (members moved at most).
#: Returns ``{moved, next ETA or '', TIME seconds, TIME micros, errors}``.
PROMOTE = (
    _HELPERS
    + _PROMOTE
    + r"""
local now, t = server_now()
local errors = {}
local moved = promote(KEYS[1], now, ARGV[1], errors)
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {moved, first[2] or '', t[1], t[2], errors}
"""
)

#: Renew this consumer's lease, then give back the messages of expired consumers.
#:
#: KEYS: consumers, deliveries. ARGV: key prefix, own lease id, lease seconds, limit.
#: Returns ``{messages restored, errors}``. A consumer whose messages could not all be
#: pushed back stays in the zset, so the next heartbeat tries again.
REAP = (
    _HELPERS
    + r"""
local now = server_now()
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[4])
local restored, errors = 0, {}
for _, consumer in ipairs(dead) do
  local clean = true
  local inflight = ARGV[1] .. 'inflight:' .. consumer
  local entries = redis.call('HGETALL', inflight)
  for i = 1, #entries, 2 do
    local source, payload = unpack_entry(entries[i + 1], 1)
    local reply = redis.pcall('RPUSH', source, payload)
    if failed(reply) then
      clean = false
      errors[#errors + 1] = source .. ': ' .. reply.err
    else
      redis.call('HDEL', inflight, entries[i])
      redis.call('HINCRBY', KEYS[2], redis.sha1hex(payload), 1)
      restored = restored + 1
    end
  end
  local registry = ARGV[1] .. 'landings:' .. consumer
  local landings = redis.call('HGETALL', registry)
  for i = 1, #landings, 2 do
    -- Newest first from the left, onto the consumer end: the oldest ends next in line.
    while true do
      local reply = redis.pcall('LMOVE', landings[i], landings[i + 1], 'LEFT', 'RIGHT')
      if not reply then break end
      if failed(reply) then
        clean = false
        errors[#errors + 1] = landings[i + 1] .. ': ' .. reply.err
        break
      end
      restored = restored + 1
    end
  end
  if clean then
    redis.call('DEL', registry)
    redis.call('ZREM', KEYS[1], consumer)
  end
end
return {restored, errors}
"""
)

#: Give leased messages back at the consumer end of their lists.
#:
#: KEYS: inflight. ARGV: tags, last delivered first, so the first ends next in line.
#: Returns ``{messages moved, errors}``; tags no longer leased are skipped.
REQUEUE = (
    _HELPERS
    + r"""
local moved, errors = 0, {}
for _, tag in ipairs(ARGV) do
  local entry = redis.call('HGET', KEYS[1], tag)
  if entry then
    local source, payload = unpack_entry(entry, 1)
    local reply = redis.pcall('RPUSH', source, payload)
    if failed(reply) then
      errors[#errors + 1] = source .. ': ' .. reply.err
    else
      redis.call('HDEL', KEYS[1], tag)
      moved = moved + 1
    end
  end
end
return {moved, errors}
"""
)

#: Move one leased message to the dead-letter list.
#:
#: KEYS: inflight, dlq, deliveries. ARGV: tag, DLQ entry, delivery counter field or ''.
#: Returns 1, or 0 when the tag is no longer leased (left alone).
DEAD_LETTER = r"""
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[2])
if ARGV[3] ~= '' then redis.call('HDEL', KEYS[3], ARGV[3]) end
return 1
"""

#: Put parked messages back on their lists.
#:
#: KEYS: dlq. ARGV: (entry, target list, payload) triples. LREM makes a concurrent
#: requeue of the same entry a no-op; requeued messages join the back of the line.
#: Returns ``{messages moved, errors}``.
REQUEUE_DEAD = (
    _HELPERS
    + r"""
local moved, errors = 0, {}
for i = 1, #ARGV, 3 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    local reply = redis.pcall('LPUSH', ARGV[i + 1], ARGV[i + 2])
    if failed(reply) then
      redis.call('RPUSH', KEYS[1], ARGV[i])
      errors[#errors + 1] = ARGV[i + 1] .. ': ' .. reply.err
    else
      moved = moved + 1
    end
  end
end
return {moved, errors}
"""
)
