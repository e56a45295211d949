-- Put parked messages back on their lists.
--
-- KEYS: dlq. ARGV: (entry, target list, payload) triples. LREM makes a concurrent
-- requeue of the same entry a no-op; requeued messages join the back of the line.
-- Returns ``{messages moved, errors}``.
-- Runs after: helpers.lua (prepended by scripts.py).

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
