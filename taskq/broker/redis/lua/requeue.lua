-- Give leased messages back at the consumer end of their lists.
--
-- KEYS: inflight. ARGV: tags, last delivered first, so the first ends next in line.
-- Returns ``{messages moved, errors}``; tags no longer leased are skipped.
-- Runs after: helpers.lua (prepended by scripts.py).

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
