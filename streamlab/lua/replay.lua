#!lua
-- replay.lua: re-inject one DLQ entry into its target stream and remove it from the DLQ (or
-- mark it replayed), in one atomic step, so the event is never both replayed and still
-- selectable, nor lost in between. The script is the arbiter between concurrent replays: the
-- second one finds the entry gone (or marked) and reports it instead of adding it again.
--
-- KEYS[1]  DLQ stream
-- KEYS[2]  target stream
-- KEYS[3]  replayed-marker hash of the DLQ (dlq id -> "replay_id\nnew id\ntarget"), written
--          only with keep_in_dlq, read always
-- KEYS[4]  ledger hash of this replay run (dlq id -> "new id\nreplay group\ntarget"), read by
--          replay_outcome; the caller sets its expiry once per batch
-- ARGV[1]  DLQ entry id
-- ARGV[2]  '1' = dry run: check everything, write nothing
-- ARGV[3]  '1' = keep the entry in the DLQ and mark it, '0' = delete it (XDEL)
-- ARGV[4]  replay run id
-- ARGV[5]  replay group stamped on the event ('' = every group), recorded in the ledger
-- ARGV[6…] field, value pairs of the entry to add (original fields, retry_count 0, marker);
--          the caller keeps their number below Lua's unpack limit (scripts.LUA_MAX_VALUES)
--          and replays larger entries with WATCH/MULTI instead
--
-- Returns {status, detail}:
--   {'ok', new id}         replayed
--   {'dry', ''}            would be replayed (dry run)
--   {'marked', marker}     already replayed and kept in the DLQ (marker hash value)
--   {'done', ledger}       gone from the DLQ, replayed earlier by this same run (ledger value)
--   {'gone', ''}           gone from the DLQ: replayed by another run, or deleted / trimmed
--   {'wrongtype', type}    the target key exists and is not a stream
--   {'full', ''}           dry run: the target's last id is the maximum, XADD would fail
--
-- Scripts are not rolled back on error, so the writes run in the order that leaves the entry
-- in the DLQ whenever one fails: XADD to the target first (if it fails, as on a target whose
-- last id is the maximum, nothing was written), then XDEL or the marker, then the ledger.
-- The shebang makes the server refuse the whole script when it is out of memory.
local MAX_ID = '18446744073709551615-18446744073709551615'
local id = ARGV[1]
local marker = redis.call('HGET', KEYS[3], id)
if marker then
  return {'marked', marker}
end
local kind = redis.call('TYPE', KEYS[2])['ok']
if kind ~= 'stream' and kind ~= 'none' then
  return {'wrongtype', kind}
end
if #redis.call('XRANGE', KEYS[1], id, id, 'COUNT', 1) == 0 then
  local done = redis.call('HGET', KEYS[4], id)
  if done then
    return {'done', done}
  end
  return {'gone', ''}
end
-- Scripts are not rolled back, and an ACL is checked per call: a user allowed XADD but not
-- XDEL would leave the event both replayed and in the DLQ. Check every write first (the dry
-- run too, so that it reports what the real run would do), and refuse with nothing written.
--!include refuse
if not redis.acl_check_cmd('XADD', KEYS[2], '*', 'f', 'v') then
  return refuse('xadd')
end
if ARGV[3] == '1' then
  if not redis.acl_check_cmd('HSET', KEYS[3], id, 'v') then
    return refuse('hset')
  end
elseif not redis.acl_check_cmd('XDEL', KEYS[1], id) then
  return refuse('xdel')
end
if not redis.acl_check_cmd('HSET', KEYS[4], id, 'v') then
  return refuse('hset')
end
if ARGV[2] == '1' then
  -- What the real run's XADD would refuse, the dry run reports too.
  if kind == 'stream' then
    local info = redis.call('XINFO', 'STREAM', KEYS[2])
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' and info[i + 1] == MAX_ID then
        return {'full', ''}
      end
    end
  end
  return {'dry', ''}
end
local new_id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 6))
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[3], id, ARGV[4] .. '\n' .. new_id .. '\n' .. KEYS[2])
else
  redis.call('XDEL', KEYS[1], id)
end
redis.call('HSET', KEYS[4], id, new_id .. '\n' .. ARGV[5] .. '\n' .. KEYS[2])
return {'ok', new_id}
