-- Sets a job's cancel flag unless it has finished, and returns its state.
--
-- KEYS[1] job hash
-- Returns false when there is no such job, else the state JSON.
local head = redis.call('HMGET', KEYS[1], 'state', 'status')
if not head[1] then
  return false
end
if head[2] == 'queued' or head[2] == 'running' or head[2] == 'scheduled' then
  redis.call('HSET', KEYS[1], 'cancel', 1)
end
return head[1]
