#!lua
-- dead_letter.lua: move one pending entry to the DLQ and ack it, in one atomic step, so the
-- entry is never both in the DLQ and pending, nor in neither.
--
-- The shebang makes Redis (7+) and Valkey refuse the whole script before it runs when the
-- server is over maxmemory, so an out-of-memory server leaves the entry pending, untouched.
-- Writes run in the order that leaves nothing lost if one fails: XADD to the DLQ first (an
-- error stops the script with nothing written), then the trim, then XACK.
--
-- KEYS[1]  source stream
-- KEYS[2]  DLQ stream
-- ARGV[1]  consumer group
-- ARGV[2]  entry id
-- ARGV[3]  consumer that must still own the entry ('' = any owner)
-- ARGV[4]  DLQ MAXLEN, approximate ('0' = unbounded)
-- ARGV[5]  DLQ MINID for age-based retention, exact ('' = none): '~' only drops whole
--          radix nodes (up to 100 entries), so a quiet DLQ would keep old entries for weeks
-- ARGV[6…] field, value pairs of the DLQ entry (original fields plus dlq_* fields); the
--          caller keeps their number below Lua's unpack limit (scripts.LUA_MAX_VALUES) and
--          moves larger entries with WATCH/MULTI instead
--
-- Returns the new DLQ entry id, or false when the entry is no longer pending for that
-- consumer (acked meanwhile, or reclaimed by another consumer, which now decides its fate).
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 then
  return false
end
if ARGV[3] ~= '' and pending[1][2] ~= ARGV[3] then
  return false
end
-- Scripts are not rolled back, and an ACL is checked per call: a user allowed XADD but not
-- XACK would leave the entry both in the DLQ and pending. Check every write first, and
-- refuse with nothing written.
local function refuse(command)
  return redis.error_reply("NOPERM this user has no permissions to run the '" .. command ..
    "' command")
end
if not redis.acl_check_cmd('XADD', KEYS[2], '*', 'f', 'v') then
  return refuse('xadd')
end
if ARGV[5] ~= '' and not redis.acl_check_cmd('XTRIM', KEYS[2], 'MINID', ARGV[5]) then
  return refuse('xtrim')
end
if not redis.acl_check_cmd('XACK', KEYS[1], ARGV[1], ARGV[2]) then
  return refuse('xack')
end
local id
if ARGV[4] ~= '0' then
  id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, 6))
else
  id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 6))
end
if ARGV[5] ~= '' then
  redis.call('XTRIM', KEYS[2], 'MINID', ARGV[5])
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return id
