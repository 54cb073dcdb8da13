-- dead_letter.lua: move one pending entry to the DLQ and ack it, in one atomic step, so the
-- entry is never both in the DLQ and pending, nor in neither.
--
-- KEYS[1]  source stream
-- KEYS[2]  DLQ stream
-- ARGV[1]  consumer group
-- ARGV[2]  entry id
-- ARGV[3]  consumer that must still own the entry ('' = any owner)
-- ARGV[4]  DLQ MAXLEN, approximate ('0' = unbounded)
-- ARGV[5]  DLQ MINID for age-based retention, exact ('' = none): '~' only drops whole
--          radix nodes (up to 100 entries), so a quiet DLQ would keep old entries for weeks
-- ARGV[6…] field, value pairs of the DLQ entry (original fields plus dlq_* fields)
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
local args = {'XADD', KEYS[2]}
if ARGV[4] ~= '0' then
  args[#args + 1] = 'MAXLEN'
  args[#args + 1] = '~'
  args[#args + 1] = ARGV[4]
end
args[#args + 1] = '*'
for i = 6, #ARGV do
  args[#args + 1] = ARGV[i]
end
local id = redis.call(unpack(args))
if ARGV[5] ~= '' then
  redis.call('XTRIM', KEYS[2], 'MINID', ARGV[5])
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return id
