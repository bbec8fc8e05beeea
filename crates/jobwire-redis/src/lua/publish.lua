-- Appends planned events to a job's log atomically with its new state: a
-- compare-and-set on the job's sequence number and epoch. The events (with
-- their ids) and the state were computed by the caller from the head it last
-- saw (jobwire_core::publish::plan); if the head moved since, nothing is
-- written and the current head is returned so the caller can plan again.
--
-- Exact through data loss (docs/design.md): every write records in `inc`
-- the replication id of the Redis history it extends (`master_replid`, new
-- on every start of a server and every promotion of a replica: the only
-- ways acknowledged writes can be lost). The first write to a job in
-- another history must start a new epoch, so that no `(epoch, id)` is ever
-- written twice: the script answers {3, ...} and the caller plans again
-- under a fresh epoch.
--
-- KEYS[1] job hash, KEYS[2] event log, KEYS[3] live stream,
-- KEYS[4] the partition's job counts: queued and running are gauges;
-- completed, failed and cancelled count jobs that finished (they expire, so
-- they are never decremented); KEYS[5] the partition's unfinished jobs per
-- owner (the per-user quota); KEYS[6] the job's priority: a publisher
-- that lost the race repeatedly claims it (ARGV[11] = '1') and, while it
-- holds it, others' writes are refused as if the head had moved, so a tight
-- loop of one process cannot starve another; it lapses after 50 ms.
-- KEYS[7] the partition's schedule (sorted set), KEYS[8] the stream of the
-- job's queue lane, KEYS[9] the partition's lane names (a set), KEYS[10]
-- the partition's ready lanes (a set: claim.lua): the
-- publish moves the job between schedule and queue as its status demands
-- (jobwire_core::publish::QueueMove), in this same step.
-- ARGV[1] expected seq, ARGV[2] expected epoch, ARGV[3] the plan's epoch
-- (ARGV[2], or a fresh one when the plan starts a new history),
-- ARGV[4] new state JSON, ARGV[5] new last_n, ARGV[6] new status,
-- ARGV[7] log MAXLEN, ARGV[8] live MAXLEN,
-- ARGV[9] retention in ms (0: the job is not finished), ARGV[10] this
-- publisher's id, ARGV[11] '1' to claim the priority, ARGV[12] the queue
-- move: '' none, 's' onto the schedule at ARGV[13] (Unix ms), 'e' off the
-- schedule into the lane, 'u' off the schedule; ARGV[14] job id,
-- ARGV[15] kind, ARGV[16] lane name; ARGV[17..] event JSONs
-- A live entry holds the batch's events in order, one field each, named by
-- the epoch (so a reader knows which history an event belongs to, and
-- readers that only take values keep working).
-- Returns {0} no such job; {1, cancel} applied;
-- {2, seq, state, last_n, cancel} the head moved;
-- {3, seq, state, last_n, cancel} the head is as expected but a new epoch
-- is needed.
local head = redis.call('HMGET', KEYS[1], 'seq', 'cancel', 'status', 'epoch', 'inc')
if not head[1] then
  return {0}
end
local n = #ARGV - 16
local first = redis.call('GET', KEYS[6])
if head[1] ~= ARGV[1] or head[4] ~= ARGV[2] or (n > 0 and first and first ~= ARGV[10]) then
  if ARGV[11] == '1' and (not first or first == ARGV[10]) then
    redis.call('SET', KEYS[6], ARGV[10], 'PX', 50)
  end
  local rest = redis.call('HMGET', KEYS[1], 'state', 'last_n')
  return {2, head[1], rest[1], rest[2], head[2]}
end
if n > 0 then
  local inc = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)') or '?'
  if head[5] ~= inc and ARGV[3] == ARGV[2] then
    local rest = redis.call('HMGET', KEYS[1], 'state', 'last_n')
    return {3, head[1], rest[1], rest[2], head[2]}
  end
  if first then
    redis.call('DEL', KEYS[6])
  end
  local epoch = ARGV[3]
  local seq = tonumber(ARGV[1])
  -- One live entry per publish (per 1000 events: unpack has a stack limit),
  -- with one field per event: the live stream is only a delivery path,
  -- and an entry per event there would double the cost of a publish.
  local live = {}
  for i = 1, n do
    seq = seq + 1
    redis.call('XADD', KEYS[2], string.format('%d-0', seq), 'e', ARGV[16 + i])
    live[#live + 1] = epoch
    live[#live + 1] = ARGV[16 + i]
    if #live == 2000 or i == n then
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[8], '*', unpack(live))
      live = {}
    end
  end
  -- Trim when the sequence crosses a multiple of 64 rather than on every
  -- XADD (measured: about 1 us per event less in Redis). Approximate
  -- trimming only drops whole 100-entry nodes anyway; the log stays within
  -- MAXLEN + 164 entries.
  if math.floor(seq / 64) ~= math.floor(tonumber(ARGV[1]) / 64) then
    redis.call('XTRIM', KEYS[2], 'MAXLEN', '~', ARGV[7])
  end
  redis.call('HSET', KEYS[1], 'seq', string.format('%d', seq), 'state', ARGV[4],
    'last_n', ARGV[5], 'status', ARGV[6], 'epoch', epoch, 'inc', inc)
  if head[3] ~= ARGV[6] then
    local open = {queued = true, running = true, scheduled = true}
    local was_open = open[head[3]]
    -- Jobs started ('s') and finished ('f') per minute, by Redis' clock,
    -- for the throughput chart: one hash per partition and hour
    -- (`<base>:throughput:<hour>`, the stats key's slot), kept 2 hours.
    local started = ARGV[6] == 'running'
    local finished = was_open and not open[ARGV[6]]
    if finished and head[3] ~= 'running' then
      -- Started and ended in one batch?
      for i = 1, n do
        if string.find(ARGV[16 + i], '"type":"job_started"', 1, true) then
          started = true
          break
        end
      end
    end
    -- The job's queue (its lane up to '#'): per queue, the scheduled jobs
    -- (a gauge in the stats hash, `scheduled/<queue>`) and the finished
    -- and failed ones per minute (`<minute>/<queue>/f|x`).
    local queue = string.match(ARGV[16], '^[^#]+')
    if queue then
      if head[3] == 'scheduled' then
        redis.call('HINCRBY', KEYS[4], 'scheduled/' .. queue, -1)
      end
      if ARGV[6] == 'scheduled' then
        redis.call('HINCRBY', KEYS[4], 'scheduled/' .. queue, 1)
      end
    end
    if started or finished then
      local minute = math.floor(tonumber(redis.call('TIME')[1]) / 60)
      local bucket = string.sub(KEYS[4], 1, -7) .. ':throughput:' .. math.floor(minute / 60)
      if started then
        redis.call('HINCRBY', bucket, minute .. ':s', 1)
      end
      if finished then
        redis.call('HINCRBY', bucket, minute .. ':f', 1)
        if queue then
          redis.call('HINCRBY', bucket, minute .. '/' .. queue .. '/f', 1)
          if ARGV[6] == 'failed' then
            redis.call('HINCRBY', bucket, minute .. '/' .. queue .. '/x', 1)
          end
        end
      end
      redis.call('EXPIRE', bucket, 7200)
    end
    if was_open then
      redis.call('HINCRBY', KEYS[4], head[3], -1)
    end
    redis.call('HINCRBY', KEYS[4], ARGV[6], 1)
    if not was_open and open[ARGV[6]] then
      -- A failed job retried by hand: unfinished again, and kept until it
      -- ends anew.
      local owner = redis.call('HGET', KEYS[1], 'owner')
      if owner then
        redis.call('HINCRBY', KEYS[5], owner, 1)
      end
      redis.call('PERSIST', KEYS[1])
      redis.call('PERSIST', KEYS[2])
    end
    if was_open and not open[ARGV[6]] then
      -- A finished job frees its unique key (create.lua; same slot).
      local unique = redis.call('HGET', KEYS[1], 'unique')
      if unique then
        redis.call('DEL', unique)
      end
      local owner = redis.call('HGET', KEYS[1], 'owner')
      if owner and redis.call('HINCRBY', KEYS[5], owner, -1) <= 0 then
        redis.call('HDEL', KEYS[5], owner)
      end
    end
  end
  local move = ARGV[12]
  if move == 's' then
    redis.call('ZADD', KEYS[7], ARGV[13], ARGV[14])
  elseif move == 'e' or move == 'u' then
    redis.call('ZREM', KEYS[7], ARGV[14])
    if move == 'e' then
      redis.call('XADD', KEYS[8], '*', 'job', ARGV[14], 'kind', ARGV[15])
      redis.call('SADD', KEYS[9], ARGV[16])
      redis.call('SADD', KEYS[10], ARGV[16])
    end
  end
  if ARGV[9] ~= '0' then
    redis.call('PEXPIRE', KEYS[1], ARGV[9])
    redis.call('PEXPIRE', KEYS[2], ARGV[9])
  end
end
return {1, head[2]}
