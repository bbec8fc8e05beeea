-- Renews, frees or gives back slots of a limited queue (see
-- lua/limit_take.lua), by Redis' clock.
--
-- KEYS[1] the running set, KEYS[2] the starts set.
-- ARGV[1] 'renew' (a lease of ARGV[2] ms from now, for slots still held),
-- 'free' (the job ended or went back: the slot is free, its start still
-- counts) or 'return' (granted but unused: neither counts);
-- ARGV[3..] the tokens.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 3, #ARGV do
  if ARGV[1] == 'renew' then
    redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[i])
  else
    redis.call('ZREM', KEYS[1], ARGV[i])
    if ARGV[1] == 'return' then
      redis.call('ZREM', KEYS[2], ARGV[i])
    end
  end
end
return 1
