-- Takes up to ARGV[3] slots of a limited queue for one claim (or
-- take-over): as many as its concurrency cap and its rate limit leave,
-- by Redis' clock. A slot is a token in the queue's running set until its
-- lease ends (renewed while its job runs, removed when the entry is acked
-- or released), so a dead worker's slots lapse with its lease; a start is
-- the token in the starts set for the rate's window. The claimer gives
-- back the tokens it found no entry for (lua/limit_slot.lua, 'return').
--
-- KEYS[1] the running set (token → lease end, ms), KEYS[2] the starts set
-- (token → start, ms); both in the queue's own slot.
-- ARGV[1] the lease (ms), ARGV[2] wanted, ARGV[3] the cap (0: none),
-- ARGV[4] the rate's max starts (0: none), ARGV[5] its window (ms),
-- ARGV[6] what the tokens start with (unique per call).
-- Returns the tokens granted.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local room = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local rate = tonumber(ARGV[4])
if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  room = math.min(room, cap - redis.call('ZCARD', KEYS[1]))
end
if rate > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[5]))
  room = math.min(room, rate - redis.call('ZCARD', KEYS[2]))
end
local tokens = {}
for i = 1, room do
  local token = ARGV[6] .. i
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), token)
  if rate > 0 then
    redis.call('ZADD', KEYS[2], now, token)
  end
  tokens[i] = token
end
if rate > 0 then
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[5]) + 60000)
end
return tokens
