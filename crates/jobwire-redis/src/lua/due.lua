-- Up to ARGV[2] scheduled jobs of a partition whose time (ARGV[1], Unix
-- ms) came, for promoter ARGV[3] to queue, under a lease on the
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
-- KEYS[1] the partition's schedule, KEYS[2] its promotion lease;
-- ARGV[5] what the partition's job hash keys start with (the hashes are in
-- the schedule's slot).
-- Returns {id, seq, state, last_n} flattened per due job, seq false when
-- the job is gone (none while another promoter holds the lease).
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[3] then
  return {}
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #due == 0 then
  if holder then
    redis.call('DEL', KEYS[2])
  end
else
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
end
local out = {}
for _, id in ipairs(due) do
  local head = redis.call('HMGET', ARGV[5] .. id, 'seq', 'state', 'last_n')
  out[#out + 1] = id
  out[#out + 1] = head[1]
  out[#out + 1] = head[2]
  out[#out + 1] = head[3]
end
return out
