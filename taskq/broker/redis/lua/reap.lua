-- Renew this consumer's lease, then give back the messages of expired consumers.
--
-- KEYS: consumers, deliveries. ARGV: key prefix, own lease id, lease seconds, limit.
-- Returns ``{messages restored, errors}``. A consumer whose messages could not all be
-- pushed back stays in the zset, so the next heartbeat tries again.
-- Runs after: helpers.lua (prepended by scripts.py).

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
  local moved, landed = return_landings(registry, errors)
  restored, clean = restored + moved, clean and landed
  if clean then
    redis.call('DEL', registry)
    redis.call('ZREM', KEYS[1], consumer)
  end
end
return {restored, errors}
