-- refuse.lua: a library chunk, not a script. `streamlab.scripts.lua_source` puts it in place
-- of the line `--!include refuse` of the scripts that check their writes against the ACL
-- (redis.acl_check_cmd) before making any, so that a user allowed only some of them gets
-- this error with nothing written.
local function refuse(command)
  return redis.error_reply("NOPERM this user has no permissions to run the '" .. command ..
    "' command")
end
