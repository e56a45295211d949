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
