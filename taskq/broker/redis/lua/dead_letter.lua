-- Move one leased message to the dead-letter list.
--
-- KEYS: inflight, dlq, deliveries. ARGV: tag, DLQ entry, delivery counter field or ''.
-- Returns 1, or 0 when the tag is no longer leased (left alone).

if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[2])
if ARGV[3] ~= '' then redis.call('HDEL', KEYS[3], ARGV[3]) end
return 1
