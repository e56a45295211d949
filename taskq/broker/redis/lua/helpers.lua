-- Shared by the scripts. Entries are "<len>:<list key><payload>" starting at `start`.

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
-- Move what a consumer's landing lists hold (read ahead, not yet taken) back onto
-- their queues: newest first from the left, onto the consumer end, so the oldest
-- ends next in line. Returns how many moved and whether all did; failures are
-- appended to `errors`.
local function return_landings(registry, errors)
  local moved, clean = 0, true
  local landings = redis.call('HGETALL', registry)
  for i = 1, #landings, 2 do
    while true do
      local reply = redis.pcall('LMOVE', landings[i], landings[i + 1], 'LEFT', 'RIGHT')
      if not reply then break end
      if failed(reply) then
        clean = false
        errors[#errors + 1] = landings[i + 1] .. ': ' .. reply.err
        break
      end
      moved = moved + 1
    end
  end
  return moved, clean
end
