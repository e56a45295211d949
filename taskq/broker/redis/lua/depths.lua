-- Count the delayed and dead-lettered messages of each list and queue (read only).
--
-- KEYS: delayed, dlq. ARGV: none. Pages through both in steps of 1000 so a large
-- store is read without building one huge reply inside Redis.
-- Returns ``{delayed: {list, count, ...}, dead: {queue, count, ...}}``: a delayed
-- member is "<32 hex><len>:<list><payload>", a dead-letter entry JSON naming its queue.

local function counted(tally)
  local out = {}
  for name, n in pairs(tally) do
    out[#out + 1] = name
    out[#out + 1] = n
  end
  return out
end

local delayed, dead, page = {}, {}, 1000
local total = redis.call('ZCARD', KEYS[1])
for start = 0, total - 1, page do
  for _, member in ipairs(redis.call('ZRANGE', KEYS[1], start, start + page - 1)) do
    local size = string.match(member, '^(%d+):', 33)
    if size then
      local from = 33 + #size + 1
      local list = string.sub(member, from, from + tonumber(size) - 1)
      delayed[list] = (delayed[list] or 0) + 1
    end
  end
end
total = redis.call('LLEN', KEYS[2])
for start = 0, total - 1, page do
  for _, raw in ipairs(redis.call('LRANGE', KEYS[2], start, start + page - 1)) do
    local ok, entry = pcall(cjson.decode, raw)
    local queue = ok and type(entry) == 'table' and entry.queue
    if type(queue) == 'string' then
      dead[queue] = (dead[queue] or 0) + 1
    end
  end
end
return {counted(delayed), counted(dead)}
