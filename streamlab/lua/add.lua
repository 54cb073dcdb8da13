#!lua
-- add.lua: a producer's XADD and its length cap in one call. The cap never removes an entry
-- a consumer group has not been given or still holds pending (see safe_trim.lua).
--
-- KEYS[1]  stream
-- ARGV[1]  maxlen (>= 1)
-- ARGV[2…] field, value pairs of the entry; the caller keeps their number below Lua's
--          unpack limit (scripts.LUA_MAX_VALUES) and adds larger entries with XADD, then
--          trim.lua
--
-- Returns {new id, removed, held} (held = 1: a lagging or holding group kept entries back;
-- removed = -1: the trim failed, and the entry is added all the same).
-- The XADD runs first: if it fails (out of memory, wrong type) nothing was written. The trim
-- runs under pcall, so that its failure can never turn an added entry into an error reply
-- (which the caller would retry, adding the event twice).
--!include safe_trim
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
local ok, trimmed = pcall(sl_safe_trim, KEYS[1], tonumber(ARGV[1]), '')
if not ok then
  return {id, -1, 0}
end
return {id, trimmed[1], trimmed[2]}
