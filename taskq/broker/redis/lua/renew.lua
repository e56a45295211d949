-- Renew this consumer's lease only: what reap.lua does first, by Redis TIME as every
-- other renewal. A worker in a gevent or eventlet process runs it from a thread of
-- the OS, on a connection of its own (taskq.worker.lease).
--
-- KEYS: consumers. ARGV: own lease id, lease seconds. Returns ZADD's reply.

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
