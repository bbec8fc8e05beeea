-- Stores a cron schedule under its name, unconditionally or as a
-- compare-and-set on the record as the caller read it (firing a tick, a
-- pause: see jobwire_core::schedule).
--
-- KEYS[1] the schedules hash; ARGV[1] the name, ARGV[2] the new record,
-- ARGV[3] '1' to compare, ARGV[4] the record expected.
-- Returns 1 stored, 0 the record was not the one expected.
if ARGV[3] == '1' and redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[4] then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
