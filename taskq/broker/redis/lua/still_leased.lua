-- Whether messages are still leased to this consumer; renew its lease if any is.
--
-- KEYS: inflight, consumers. ARGV: own lease id, lease seconds, tags.
-- Returns one 0/1 per tag. A consumer whose lease lapsed and was reaped finds its
-- tags gone (the reaper moved those messages back to their queues); one that lapsed
-- and was not reaped yet still has them, and renewing keeps it that way.
-- Runs after: helpers.lua (prepended by scripts.py).

local held, any = {}, false
for i = 3, #ARGV do
  held[#held + 1] = redis.call('HEXISTS', KEYS[1], ARGV[i])
  if held[#held] == 1 then any = true end
end
if any then
  redis.call('ZADD', KEYS[2], server_now() + tonumber(ARGV[2]), ARGV[1])
end
return held
