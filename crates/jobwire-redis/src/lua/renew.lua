-- Renews a worker's lease on a queue entry, only if the entry is still that
-- worker's: a plain XCLAIM would let a zombie steal back a reclaimed job.
--
-- KEYS[1] queue stream
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] entry id
-- Returns 1 when renewed, 0 when the entry is no longer this consumer's.
local owned = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #owned == 0 then
  return 0
end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
