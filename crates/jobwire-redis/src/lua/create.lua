-- Creates a job in one step: its state hash, its event log holding
-- `job_queued` (id 1-0), the copy of that event on the partition's live
-- stream, its listing entries and (unless external) its queue entry. One
-- script is one record in the AOF and one unit of replication, so a crash
-- or a failover keeps all of it or none: never a job that is neither
-- listed nor queued. Every key is in the job's partition's slot, so on
-- Redis Cluster too it is one script on one node. `inc` records the Redis
-- history the job was written in (publish.lua).
--
-- KEYS[1] job hash, KEYS[2] event log, KEYS[3] live stream,
-- KEYS[4] the partition's job counts (a hash: status -> count),
-- KEYS[5] the partition's unfinished jobs per owner (a hash),
-- KEYS[6] the partition's jobs (sorted set), KEYS[7] the owner's jobs in
-- the partition (sorted set), KEYS[8] the stream of the job's queue lane
-- (queue and priority) in the partition, KEYS[9] the partition's lane
-- names (a set), KEYS[10] the record of the create's idempotency key or
-- unique key (any key of the slot without one), KEYS[11] the partition's
-- schedule (a sorted set: job id by the time it becomes runnable),
-- KEYS[12] the partition's ready lanes (a set: claim.lua)
-- ARGV[1] state JSON, ARGV[2] event JSON, ARGV[3] epoch, ARGV[4] status,
-- ARGV[5] log MAXLEN, ARGV[6] live MAXLEN, ARGV[7] owner, ARGV[8] job id,
-- ARGV[9] kind, ARGV[10] '1' to queue the job (not external),
-- ARGV[11] the lane's name, ARGV[12] the request's digest, ARGV[13] how
-- long an idempotency key counts in ms ('0': no key), ARGV[14] what the
-- partition's job keys start with, ARGV[15] '1' when KEYS[10] is a unique
-- key's record (it counts while its job is unfinished: publish.lua and
-- delete.lua delete it when the job ends or goes), ARGV[16] when the job
-- becomes runnable, in Unix ms ('0': now; else it is scheduled, not queued)
-- Returns 1 when created, 0 when the job already exists, {2, record} when
-- the idempotency key names a job that still exists, {3, record} when the
-- unique key names a job that is not finished.
local keyed = ARGV[13] ~= '0'
local unique = ARGV[15] == '1'
if keyed or unique then
  local record = redis.call('GET', KEYS[10])
  if record then
    local id = string.match(record, '^(%S+)')
    local status = id and redis.call('HGET', ARGV[14] .. id, 'status')
    -- A key whose job is gone (deleted, expired) is free again; a unique
    -- key also once its job has finished.
    if keyed and status then
      return {2, record}
    end
    if unique and (status == 'queued' or status == 'running' or status == 'scheduled') then
      return {3, record}
    end
  end
end
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
redis.call('ZADD', KEYS[6], 0, ARGV[8])
redis.call('ZADD', KEYS[7], 0, ARGV[8])
if ARGV[16] ~= '0' then
  redis.call('ZADD', KEYS[11], ARGV[16], ARGV[8])
  -- Scheduled jobs per queue (publish.lua keeps it from here on).
  redis.call('HINCRBY', KEYS[4], 'scheduled/' .. string.match(ARGV[11], '^[^#]+'), 1)
elseif ARGV[10] == '1' then
  redis.call('XADD', KEYS[8], '*', 'job', ARGV[8], 'kind', ARGV[9])
  redis.call('SADD', KEYS[9], ARGV[11])
  redis.call('SADD', KEYS[12], ARGV[11])
end
if keyed then
  redis.call('SET', KEYS[10], ARGV[8] .. ' ' .. ARGV[12], 'PX', ARGV[13])
end
if unique then
  redis.call('SET', KEYS[10], ARGV[8])
  redis.call('HSET', KEYS[1], 'unique', KEYS[10])
end
return 1
