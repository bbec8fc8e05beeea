-- Creates group ARGV[1] (from id 0) on each stream KEYS[i] that lacks it,
-- making the stream if need be: for the blocking read of an idle claim,
-- which fails on a stream without the group.
--
-- Returns the number of groups created.
local made = 0
for _, key in ipairs(KEYS) do
  local ok = redis.pcall('XGROUP', 'CREATE', key, ARGV[1], '0', 'MKSTREAM')
  if type(ok) ~= 'table' or not ok.err then
    made = made + 1
  end
end
return made
