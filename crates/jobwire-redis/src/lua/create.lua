-- Creates a job: its state hash, its event log holding `job_queued` (id 1-0),
-- and the copy of that event on the partition's live stream. All keys share
-- the job's partition hash tag, so this runs in one slot (Redis Cluster safe).
-- `inc` records the Redis history the job was written in (publish.lua).
--
-- KEYS[1] job hash, KEYS[2] event log, KEYS[3] live stream,
-- KEYS[4] the partition's job counts (a hash: status -> count),
-- KEYS[5] the partition's unfinished jobs per owner (a hash)
-- ARGV[1] state JSON, ARGV[2] event JSON, ARGV[3] epoch, ARGV[4] status,
-- ARGV[5] log MAXLEN, ARGV[6] live MAXLEN, ARGV[7] owner
-- Returns 1 when created, 0 when the job already exists.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local inc = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)') or '?'
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'seq', 1, 'last_n', 0, 'cancel', 0,
  'epoch', ARGV[3], 'status', ARGV[4], 'inc', inc, 'owner', ARGV[7])
redis.call('HINCRBY', KEYS[4], ARGV[4], 1)
redis.call('HINCRBY', KEYS[5], ARGV[7], 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '1-0', 'e', ARGV[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', ARGV[3], ARGV[2])
return 1
