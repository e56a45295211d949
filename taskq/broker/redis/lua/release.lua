-- Give back everything one consumer still holds, uncounted, and forget the consumer:
-- what a prefork parent does for a child that died (its running message was
-- settled first, so what is left never started).
--
-- KEYS: consumers. ARGV: key prefix, the consumer's lease id.
-- Returns ``{messages restored, errors}``. A consumer whose messages could not all be
-- pushed back stays in the zset, so a reaper tries again once its lease runs out.
-- Runs after: helpers.lua (prepended by scripts.py).

local consumer = ARGV[2]
local restored, errors, clean = 0, {}, true
local inflight = ARGV[1] .. 'inflight:' .. consumer
local entries = redis.call('HGETALL', inflight)
-- Newest tag last: pushed last onto the consumer end, the oldest ends next in line.
for i = #entries - 1, 1, -2 do
  local source, payload = unpack_entry(entries[i + 1], 1)
  local reply = redis.pcall('RPUSH', source, payload)
  if failed(reply) then
    clean = false
    errors[#errors + 1] = source .. ': ' .. reply.err
  else
    redis.call('HDEL', inflight, entries[i])
    restored = restored + 1
  end
end
local registry = ARGV[1] .. 'landings:' .. consumer
local moved, landed = return_landings(registry, errors)
restored, clean = restored + moved, clean and landed
if clean then
  redis.call('DEL', registry)
  redis.call('ZREM', KEYS[1], consumer)
end
return {restored, errors}
