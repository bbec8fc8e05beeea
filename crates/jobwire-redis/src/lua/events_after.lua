-- Reads the events after a position, atomically with the checks that decide
-- whether the position can be resumed from at all.
--
-- KEYS[1] job hash, KEYS[2] event log
-- ARGV[1] after (an event id), ARGV[2] limit, ARGV[3] expected epoch ('' = any)
-- Returns {0} no such job; {1, epoch, event JSON...} the events (of that epoch);
-- {2, epoch} epoch changed; {3, seq} position beyond the log;
-- {4, oldest} events after the position were trimmed.
local head = redis.call('HMGET', KEYS[1], 'seq', 'epoch')
if not head[1] then
  return {0}
end
if ARGV[3] ~= '' and ARGV[3] ~= head[2] then
  return {2, head[2]}
end
local after = tonumber(ARGV[1])
local seq = tonumber(head[1])
if after > seq then
  return {3, head[1]}
end
if after == seq then
  return {1, head[2]}
end
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
local oldest = seq + 1
if first[1] then
  oldest = tonumber(string.match(first[1][1], '^(%d+)'))
end
if after + 1 < oldest then
  return {4, string.format('%d', oldest)}
end
local entries = redis.call('XRANGE', KEYS[2], string.format('%d-0', after + 1), '+', 'COUNT', ARGV[2])
local out = {1, head[2]}
for i, entry in ipairs(entries) do
  out[i + 2] = entry[2][2]
end
return out
