-- For each queue lane stream KEYS[i] of one partition: its length, its
-- entries pending in group ARGV[1] (delivered, not acked: running, or
-- abandoned until taken over), and the id of its oldest entry not yet
-- delivered ('' when none; the id's time is when it was queued).
--
-- Returns {{len, pending, oldest}, ...} in the order of KEYS.
local out = {}
for i, key in ipairs(KEYS) do
  local len = redis.call('XLEN', key)
  local pending, last = 0, nil
  local groups = redis.pcall('XINFO', 'GROUPS', key)
  if type(groups) == 'table' and not groups.err then
    for _, group in ipairs(groups) do
      local fields = {}
      for j = 1, #group, 2 do
        fields[group[j]] = group[j + 1]
      end
      if fields['name'] == ARGV[1] then
        pending = fields['pending'] or 0
        last = fields['last-delivered-id']
      end
    end
  end
  local oldest = ''
  if len > pending then
    local from = '-'
    if last and last ~= '0-0' then
      from = '(' .. last
    end
    local first = redis.call('XRANGE', key, from, '+', 'COUNT', 1)
    if first[1] then
      oldest = first[1][1]
    end
  end
  out[i] = {len, pending, oldest}
end
return out
