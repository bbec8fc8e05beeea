-- Deletes the queue group's consumers that hold no entries and have not
-- been seen for a while. Worker processes join under fresh names, so every
-- restart adds a consumer; without this the group grows forever.
--
-- Atomic, so that a consumer cannot claim an entry between the check and
-- the delete (XGROUP DELCONSUMER drops a consumer's pending entries).
--
-- KEYS     the queue streams (of one partition on a cluster)
-- ARGV[1]  the group
-- ARGV[2]  the calling consumer (never deleted)
-- ARGV[3]  idle limit in milliseconds
-- Returns the number of consumers deleted.
local limit = tonumber(ARGV[3])
local deleted = 0
for _, key in ipairs(KEYS) do
  -- A stream without the group (never claimed from) has no consumers.
  local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', key, ARGV[1])
  if not ok then
    consumers = {}
  end
  for _, consumer in ipairs(consumers) do
    local name, pending, idle
    for i = 1, #consumer, 2 do
      local field = consumer[i]
      if field == 'name' then
        name = consumer[i + 1]
      elseif field == 'pending' then
        pending = consumer[i + 1]
      elseif field == 'idle' then
        idle = consumer[i + 1]
      end
    end
    if name and name ~= ARGV[2] and pending == 0 and idle and idle > limit then
      redis.call('XGROUP', 'DELCONSUMER', key, ARGV[1], name)
      deleted = deleted + 1
    end
  end
end
return deleted
