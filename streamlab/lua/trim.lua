#!lua
-- trim.lua: a length cap and/or a retention cut, applied after the XADD it bounds, without
-- removing anything a consumer group has not been given or still holds pending (see
-- safe_trim.lua). Producers call it after their XADD, and the dead-letter transaction after
-- its EXEC.
--
-- KEYS[1]  stream
-- ARGV[1]  maxlen ('0' = no cap)
-- ARGV[2]  retention in milliseconds: drop entries older than that by the server's clock
--          ('' = none)
--
-- Returns {removed, held} (held = 1: a lagging or holding group kept entries back).
-- The shebang makes an out-of-memory server refuse the script; the entry added before it
-- stays, and the stream is only longer than its cap.
--!include safe_trim
return sl_safe_trim(KEYS[1], tonumber(ARGV[1]), sl_retention_minid(ARGV[2]))
