-- Puts a queue entry leased to a worker back at the end of the queue (the
-- worker is shutting down): the entry is acked and deleted, and a copy with
-- the same fields is added, so the group delivers it to the next claim.
--
-- KEYS[1] the lane's stream, KEYS[2] the partition's ready lanes
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] entry id, ARGV[4] the lane
-- Returns 1 when released, 0 when the entry is no longer this consumer's.
local owned = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #owned == 0 then
  return 0
end
local entry = redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
if #entry == 1 then
  redis.call('XADD', KEYS[1], '*', unpack(entry[1][2]))
  redis.call('SADD', KEYS[2], ARGV[4])
end
return 1
