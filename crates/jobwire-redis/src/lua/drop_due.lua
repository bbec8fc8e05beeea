-- Takes a job off its partition's schedule unless it is still scheduled
-- (its state was deleted, or lost with writes Redis lost): checked and
-- done in one step, so a job scheduled again meanwhile stays on.
--
-- KEYS[1] job hash, KEYS[2] the partition's schedule
-- ARGV[1] job id
if redis.call('HGET', KEYS[1], 'status') ~= 'scheduled' then
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return 1
