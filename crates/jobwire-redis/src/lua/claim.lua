-- Claims up to ARGV[3] new entries for consumer ARGV[2] of group ARGV[1]
-- from the queue streams KEYS[1..n], in that order: everything the first
-- has before the second is looked at. One round trip for any number of
-- queues and partitions (on a cluster, the streams of one partition: one
-- slot). A stream without the group gets it (from id 0, so entries queued
-- before count) and is read at once. An empty stream is passed over with
-- one XLEN (most streams of an idle priority lane are empty; acked entries
-- are deleted, so an empty stream has nothing to deliver).
--
-- Returns, per entry, the index of its stream in KEYS, its id and its
-- fields: {i, id, {field, value, ...}, i, id, {...}, ...}.
local want = tonumber(ARGV[3])
local out = {}
local function read(key)
  return redis.pcall('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', want, 'STREAMS', key, '>')
end
for i, key in ipairs(KEYS) do
  if want <= 0 then
    break
  end
  local reply = false
  if redis.call('XLEN', key) > 0 or redis.call('EXISTS', key) == 0 then
    reply = read(key)
  end
  if type(reply) == 'table' and reply.err then
    if string.find(reply.err, 'NOGROUP', 1, true) then
      redis.call('XGROUP', 'CREATE', key, ARGV[1], '0', 'MKSTREAM')
      reply = read(key)
    else
      return redis.error_reply(reply.err)
    end
  end
  if type(reply) == 'table' and reply[1] then
    for _, entry in ipairs(reply[1][2]) do
      out[#out + 1] = i
      out[#out + 1] = entry[1]
      out[#out + 1] = entry[2]
      want = want - 1
    end
  end
end
return out
