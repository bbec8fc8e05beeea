-- Appends planned events to a job's log atomically with its new state: a
-- compare-and-set on the job's sequence number. The events (with their ids)
-- and the state were computed by the caller from the head it last saw
-- (jobwire_core::publish::plan); if the head moved since, nothing is written
-- and the current head is returned so the caller can plan again.
--
-- KEYS[1] job hash, KEYS[2] event log, KEYS[3] live stream,
-- KEYS[4] the partition's job counts: queued and running are gauges;
-- completed, failed and cancelled count jobs that finished (they expire, so
-- they are never decremented)
-- ARGV[1] expected seq, ARGV[2] new state JSON, ARGV[3] new last_n,
-- ARGV[4] new status, ARGV[5] log MAXLEN, ARGV[6] live MAXLEN,
-- ARGV[7] retention in ms (0: the job is not finished), ARGV[8..] event JSONs
-- A live entry holds the batch's events in order, one field `e` each.
-- Returns {0} no such job; {1, cancel} applied;
-- {2, seq, state, last_n, cancel} the head moved.
local head = redis.call('HMGET', KEYS[1], 'seq', 'cancel', 'status')
if not head[1] then
  return {0}
end
if head[1] ~= ARGV[1] then
  local rest = redis.call('HMGET', KEYS[1], 'state', 'last_n')
  return {2, head[1], rest[1], rest[2], head[2]}
end
local n = #ARGV - 7
if n > 0 then
  local seq = tonumber(ARGV[1])
  -- One live entry per publish (per 1000 events: unpack has a stack limit),
  -- with one `e` field per event: the live stream is only a delivery path,
  -- and an entry per event there would double the cost of a publish.
  local live = {}
  for i = 1, n do
    seq = seq + 1
    redis.call('XADD', KEYS[2], string.format('%d-0', seq), 'e', ARGV[7 + i])
    live[#live + 1] = 'e'
    live[#live + 1] = ARGV[7 + i]
    if #live == 2000 or i == n then
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', unpack(live))
      live = {}
    end
  end
  -- Trim when the sequence crosses a multiple of 64 rather than on every
  -- XADD (measured: about 1 us per event less in Redis). Approximate
  -- trimming only drops whole 100-entry nodes anyway; the log stays within
  -- MAXLEN + 164 entries.
  if math.floor(seq / 64) ~= math.floor(tonumber(ARGV[1]) / 64) then
    redis.call('XTRIM', KEYS[2], 'MAXLEN', '~', ARGV[5])
  end
  redis.call('HSET', KEYS[1], 'seq', string.format('%d', seq), 'state', ARGV[2],
    'last_n', ARGV[3], 'status', ARGV[4])
  if head[3] ~= ARGV[4] then
    if head[3] == 'queued' or head[3] == 'running' then
      redis.call('HINCRBY', KEYS[4], head[3], -1)
    end
    redis.call('HINCRBY', KEYS[4], ARGV[4], 1)
  end
  if ARGV[7] ~= '0' then
    redis.call('PEXPIRE', KEYS[1], ARGV[7])
    redis.call('PEXPIRE', KEYS[2], ARGV[7])
  end
end
return {1, head[2]}
