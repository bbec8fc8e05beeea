-- Up to ARGV[2] scheduled jobs per partition whose time (ARGV[1], Unix
-- ms) came, for promoter ARGV[3] to queue, under a lease on each
-- partition's promotion (ARGV[4] ms): while one promoter holds it, the
-- others pass the partition by, so they do not all race to publish the
-- same jobs. The lease is only about efficiency: a promotion is exactly
-- once by its publish (publish.lua), lease or not, and a promoter that
-- dies holds the partition up for at most the lease.
--
-- Each job comes with its head (what publish.lua answers when the head
-- moved): the promoter plans the promotion from it at once instead of
-- asking publish.lua for it first, one round trip and one script less per
-- promoted job. The head is only a starting point: publish.lua's
-- compare-and-set still decides.
--
-- Any number of partitions, in pairs of keys: KEYS[2i-1] partition i's
-- schedule, KEYS[2i] its promotion lease; ARGV[4+i] what its job hash keys
-- start with (the hashes are in the schedule's slot). One call asks every
-- partition of a master (on a cluster, one partition per call: its keys
-- share a slot).
-- Returns {id, seq, state, last_n} flattened per due job, seq false when
-- the job is gone (none from a partition another promoter holds).
local out = {}
for i = 1, #KEYS / 2 do
  local schedule, lease = KEYS[2 * i - 1], KEYS[2 * i]
  local holder = redis.call('GET', lease)
  if not holder or holder == ARGV[3] then
    local due = redis.call('ZRANGEBYSCORE', schedule, '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
    if #due == 0 then
      if holder then
        redis.call('DEL', lease)
      end
    else
      redis.call('SET', lease, ARGV[3], 'PX', ARGV[4])
    end
    local prefix = ARGV[4 + i]
    for _, id in ipairs(due) do
      local head = redis.call('HMGET', prefix .. id, 'seq', 'state', 'last_n')
      out[#out + 1] = id
      out[#out + 1] = head[1]
      out[#out + 1] = head[2]
      out[#out + 1] = head[3]
    end
  end
end
return out
