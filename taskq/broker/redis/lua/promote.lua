-- Moves up to `limit` due members of the delayed zset to their lists and returns how
-- many it moved; appends to `errors`. The due members are the zset's lowest ranks
-- (ZRANGEBYSCORE from -inf), so one ZREMRANGEBYRANK removes them all, O(log n + k),
-- instead of a ZREM each. Each list gets its messages in multi-value LPUSHes (1,000
-- values at most, under Lua's stack limit), earliest ETA first, so served first:
-- consumers pop from the right. Order across lists is moot. A list that refuses them
-- (a key of another type) keeps its members in the zset, due again in a minute, and
-- is reported; the rest are promoted. Most of the cost is copying each member into
-- Lua and cutting its payload out (string.sub); see docs/delayed.md for figures.

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
