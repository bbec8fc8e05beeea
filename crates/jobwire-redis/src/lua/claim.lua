-- Claims up to ARGV[3] new entries for consumer ARGV[2] of group ARGV[1]
-- from the queue lanes ARGV[5+n..] (in that order, each in the n
-- partitions in the order given: everything a lane has before the next
-- lane is looked at). One round trip for any number of lanes and
-- partitions (on a cluster, one partition: one slot).
--
-- Only the lanes in a partition's ready set are read: every XADD to a lane
-- adds it there in the same step (create.lua, publish.lua, release.lua),
-- and this script takes it out once a read finds it drained, so an idle
-- lane costs nothing. A stream without the group gets it (from id 0, so
-- entries queued before count). Lane streams are built from the
-- partitions' key bases: they share the slot of the ready set passed.
--
-- KEYS[1..n] the partitions' ready sets
-- ARGV[4] n, ARGV[5..4+n] the partitions' key bases (`<prefix>:{t}`),
-- ARGV[5+n..] lane names
-- Returns, per entry, the index of its lane (1 = the first), of its
-- partition, its id and its fields: {l, p, id, {field, value, ...}, ...}.
local want = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local ready = {}
for i = 1, n do
  local set = {}
  for _, lane in ipairs(redis.call('SMEMBERS', KEYS[i])) do
    set[lane] = true
  end
  ready[i] = set
end
local function read(key)
  return redis.pcall('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', want, 'STREAMS', key, '>')
end
local out = {}
for l = 5 + n, #ARGV do
  local lane = ARGV[l]
  for i = 1, n do
    if want <= 0 then
      return out
    end
    if ready[i][lane] then
      local key = ARGV[4 + i] .. ':queue:' .. lane
      local reply = read(key)
      if type(reply) == 'table' and reply.err then
        if string.find(reply.err, 'NOGROUP', 1, true) then
          redis.call('XGROUP', 'CREATE', key, ARGV[1], '0', 'MKSTREAM')
          reply = read(key)
        else
          return redis.error_reply(reply.err)
        end
      end
      local got = 0
      if type(reply) == 'table' and reply[1] then
        for _, entry in ipairs(reply[1][2]) do
          out[#out + 1] = l - 4 - n
          out[#out + 1] = i
          out[#out + 1] = entry[1]
          out[#out + 1] = entry[2]
          got = got + 1
        end
      end
      if got < want then
        redis.call('SREM', KEYS[i], lane)
      end
      want = want - got
    end
  end
end
return out
