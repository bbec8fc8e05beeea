-- Up to ARGV[2] scheduled jobs of a partition whose time (ARGV[1], Unix
-- ms) came, for promoter ARGV[3] to queue, under a lease on the
-- partition's promotion (ARGV[4] ms): while one promoter holds it, the
-- others pass the partition by, so they do not all race to publish the
-- same jobs. The lease is only about efficiency: a promotion is exactly
-- once by its publish (publish.lua), lease or not, and a promoter that
-- dies holds the partition up for at most the lease.
--
-- KEYS[1] the partition's schedule, KEYS[2] its promotion lease
-- Returns the job ids (none while another promoter holds the lease).
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
return due
