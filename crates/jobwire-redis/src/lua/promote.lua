-- Queues a batch of one partition's scheduled jobs whose time came
-- (jobwire_core::settle::promote_due). For each job it writes what
-- publish.lua writes for a publish of one `job_queued` that moves the job
-- from `scheduled` to `queued`: a compare-and-set on the job's sequence
-- number and epoch, the event in its log, its new state, the job off the
-- schedule and into its queue lane, the partition's counts. But it does so
-- for the whole batch in one call, with one live entry, one ZREM and one
-- update of the counts for all of them: promoted one publish each, a
-- delayed job cost about a fifth more Redis work than a plain one.
--
-- Each job was planned by the caller from the head due.lua returned
-- (jobwire_core::publish::plan: a move from `scheduled` to `queued`). A
-- job whose head moved since, or whose last write was in another Redis
-- history (a new epoch is needed: see publish.lua), is left alone and
-- reported, for the caller to publish on its own. A promotion does not
-- wait for a publisher holding the job's priority (publish.lua's KEYS[6]):
-- that priority only keeps a tight publishing loop from starving another
-- process, and a job is promoted once; the compare-and-set still decides.
--
-- KEYS[1] the partition's live stream, KEYS[2] its job counts, KEYS[3] its
-- schedule, KEYS[4] its lane names, KEYS[5] its ready lanes; then per job:
-- its hash, its event log, its lane's stream (3 keys each).
-- ARGV[1] log MAXLEN, ARGV[2] live MAXLEN; then per job: expected seq,
-- expected epoch, new state JSON, new last_n, job id, kind, lane name,
-- event JSON (8 each).
-- Returns per job: 1 promoted, 0 no such job, 2 left for the caller.
local inc = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)') or '?'
local out, live, promoted, lanes, seen, per_queue = {}, {}, {}, {}, {}, {}
for i = 0, (#KEYS - 5) / 3 - 1 do
  local k, a = 5 + i * 3, 2 + i * 8
  local head = redis.call('HMGET', KEYS[k + 1], 'seq', 'status', 'epoch', 'inc')
  if not head[1] then
    out[#out + 1] = 0
  elseif head[1] ~= ARGV[a + 1] or head[3] ~= ARGV[a + 2] or head[2] ~= 'scheduled'
      or head[4] ~= inc then
    out[#out + 1] = 2
  else
    local seq = tonumber(ARGV[a + 1]) + 1
    redis.call('XADD', KEYS[k + 2], string.format('%d-0', seq), 'e', ARGV[a + 8])
    -- As publish.lua: trim when the sequence crosses a multiple of 64.
    if seq % 64 == 0 then
      redis.call('XTRIM', KEYS[k + 2], 'MAXLEN', '~', ARGV[1])
    end
    redis.call('HSET', KEYS[k + 1], 'seq', string.format('%d', seq), 'state', ARGV[a + 3],
      'last_n', ARGV[a + 4], 'status', 'queued')
    redis.call('XADD', KEYS[k + 3], '*', 'job', ARGV[a + 5], 'kind', ARGV[a + 6])
    live[#live + 1] = head[3]
    live[#live + 1] = ARGV[a + 8]
    promoted[#promoted + 1] = ARGV[a + 5]
    local lane = ARGV[a + 7]
    if not seen[lane] then
      seen[lane] = true
      lanes[#lanes + 1] = lane
    end
    local queue = string.match(lane, '^[^#]+') or lane
    per_queue[queue] = (per_queue[queue] or 0) + 1
    out[#out + 1] = 1
  end
end
if #promoted > 0 then
  -- The live stream is only a delivery path: the batch's events share
  -- entries (of at most 1000 events: unpack has a stack limit), each
  -- field named by its job's epoch, as publish.lua writes them.
  for i = 1, #live, 2000 do
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*',
      unpack(live, i, math.min(i + 1999, #live)))
  end
  for i = 1, #promoted, 1000 do
    redis.call('ZREM', KEYS[3], unpack(promoted, i, math.min(i + 999, #promoted)))
  end
  redis.call('HINCRBY', KEYS[2], 'scheduled', -#promoted)
  redis.call('HINCRBY', KEYS[2], 'queued', #promoted)
  for queue, n in pairs(per_queue) do
    redis.call('HINCRBY', KEYS[2], 'scheduled/' .. queue, -n)
  end
  redis.call('SADD', KEYS[4], unpack(lanes))
  redis.call('SADD', KEYS[5], unpack(lanes))
end
return out
