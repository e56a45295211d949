-- Promote due delayed messages only (what FETCH does first, without leasing), for a
-- caller that wants to move a large due batch in several short calls.
--
-- KEYS: delayed. ARGV: limit (members moved at most).
-- Returns ``{moved, next ETA or '', TIME seconds, TIME micros, errors}``.
-- Runs after: helpers.lua, promote.lua (prepended by scripts.py).

local now, t = server_now()
local errors = {}
local moved = promote(KEYS[1], now, ARGV[1], errors)
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {moved, first[2] or '', t[1], t[2], errors}
