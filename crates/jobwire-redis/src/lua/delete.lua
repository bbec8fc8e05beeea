-- Deletes a job's state and log, keeping the partition's job counts right.
--
-- KEYS[1] job hash, KEYS[2] event log, KEYS[3] the partition's job counts,
-- KEYS[4] the partition's unfinished jobs per owner, KEYS[5] the
-- partition's schedule, KEYS[6] its live stream; ARGV[1] the job's id,
-- ARGV[2] the live stream's MAXLEN
-- The live stream gets a `!deleted` entry (a field no epoch can be named:
-- see tail.rs), so every gateway tells the job's watchers it is gone.
-- Returns false when there is no such job, else the job's owner-bearing
-- state JSON (the caller then removes the listing entries).
local head = redis.call('HMGET', KEYS[1], 'state', 'status', 'owner', 'unique')
if not head[1] then
  return false
end
if head[2] == 'queued' or head[2] == 'running' or head[2] == 'scheduled' then
  -- An unfinished job's unique key is free again (create.lua; same slot).
  if head[4] then
    redis.call('DEL', head[4])
  end
  redis.call('HINCRBY', KEYS[3], head[2], -1)
  if head[2] == 'scheduled' then
    local state = cjson.decode(head[1])
    local queue = state.queue
    if queue == nil or queue == '' then
      queue = state.kind
    end
    redis.call('HINCRBY', KEYS[3], 'scheduled/' .. queue, -1)
  end
  if head[3] and redis.call('HINCRBY', KEYS[4], head[3], -1) <= 0 then
    redis.call('HDEL', KEYS[4], head[3])
  end
end
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[2], '*', '!deleted', ARGV[1])
return head[1]
