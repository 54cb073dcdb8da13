#!lua
-- prune_consumers.lua: delete the consumers of a group that hold no pending entry and have
-- been idle for a while, so that worker churn (a new consumer name per process) does not
-- grow the group's consumer list forever.
--
-- XGROUP DELCONSUMER makes a consumer's pending entries unclaimable, so the check and the
-- delete run in one atomic step: a consumer that reads an entry in between cannot exist.
-- A deleted consumer that is in fact alive loses nothing: its next read creates it again.
--
-- KEYS[1]  stream
-- ARGV[1]  consumer group
-- ARGV[2]  minimum idle time, ms (XINFO CONSUMERS ``idle``: since its last read or claim)
-- ARGV[3]  a consumer never to delete (the caller)
-- ARGV[4]  at most this many deletions per call
--
-- Returns the names of the deleted consumers.
local consumers = redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
local min_idle = tonumber(ARGV[2])
local limit = tonumber(ARGV[4])
local deleted = {}
for _, row in ipairs(consumers) do
  if #deleted >= limit then
    break
  end
  local info = {}
  for i = 1, #row, 2 do
    info[row[i]] = row[i + 1]
  end
  if info['name'] ~= ARGV[3] and tonumber(info['pending']) == 0
      and tonumber(info['idle']) >= min_idle then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    deleted[#deleted + 1] = info['name']
  end
end
return deleted
