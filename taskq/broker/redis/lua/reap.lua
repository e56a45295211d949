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
