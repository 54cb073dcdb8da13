#!lua
-- dead_letter.lua: move one pending entry to the DLQ and ack it, in one atomic step, so the
-- entry is never both in the DLQ and pending, nor in neither.
--
-- The shebang makes Redis (7+) and Valkey refuse the whole script before it runs when the
-- server is over maxmemory, so an out-of-memory server leaves the entry pending, untouched.
-- Writes run in the order that leaves nothing lost if one fails: XADD to the DLQ first (an
-- error stops the script with nothing written), then XACK, then the trim (a failed trim
-- leaves the DLQ longer, never the entry both acked-and-gone or dead-lettered twice). The trim
-- never removes a DLQ entry that a consumer group of the DLQ has not been given or still
-- holds pending (safe_trim.lua), and its retention cut is computed from the server's clock.
--
-- KEYS[1]  source stream
-- KEYS[2]  DLQ stream
-- ARGV[1]  consumer group
-- ARGV[2]  entry id
-- ARGV[3]  consumer that must still own the entry ('' = any owner)
-- ARGV[4]  DLQ maxlen, approximate as with MAXLEN ~ ('0' = unbounded)
-- ARGV[5]  DLQ retention in milliseconds, by the server's clock ('' = none); the cut is
--          exact: '~' only drops whole radix nodes (up to 100 entries), so a quiet DLQ
--          would keep old entries for weeks
-- ARGV[6…] field, value pairs of the DLQ entry (original fields plus dlq_* fields); the
--          caller keeps their number below Lua's unpack limit (scripts.LUA_MAX_VALUES) and
--          moves larger entries with WATCH/MULTI instead
--
-- Returns the new DLQ entry id, or false when the entry is no longer pending for that
-- consumer (acked meanwhile, or reclaimed by another consumer, which now decides its fate).
--!include safe_trim
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 then
  return false
end
if ARGV[3] ~= '' and pending[1][2] ~= ARGV[3] then
  return false
end
-- Scripts are not rolled back, and an ACL is checked per call: a user allowed XADD but not
-- XACK would leave the entry both in the DLQ and pending. Check both writes first, and
-- refuse with nothing written (the trim after them is allowed to fail).
--!include refuse
if not redis.acl_check_cmd('XADD', KEYS[2], '*', 'f', 'v') then
  return refuse('xadd')
end
if not redis.acl_check_cmd('XACK', KEYS[1], ARGV[1], ARGV[2]) then
  return refuse('xack')
end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 6))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if ARGV[4] ~= '0' or ARGV[5] ~= '' then
  -- Under pcall: the entry is moved already, and a failed trim (a user without +time, say)
  -- must not turn that into an error reply.
  pcall(function()
    sl_safe_trim(KEYS[2], tonumber(ARGV[4]), sl_retention_minid(ARGV[5]))
  end)
end
return id
