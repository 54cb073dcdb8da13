"""Lua scripts for the atomic multi-key steps, loaded from ``streamlab/lua`` once per client.

Every key a script touches is passed in KEYS (never built inside the script), which keeps the
scripts valid on Redis Cluster when the keys share a hash tag.
"""

from __future__ import annotations

import hashlib
from functools import cache, cached_property
from importlib import resources
from typing import Any

from redis.commands.core import Script

__all__ = ["LUA_MAX_VALUES", "SCRIPT_COMMANDS", "Scripts", "lua_source", "script_by_sha"]

# Lua's unpack (and so a redis.call built from ARGV) stops at about 8,000 values; keep well
# below it. Larger entries are moved by `streamlab._moves` with WATCH/MULTI instead.
LUA_MAX_VALUES = 7000


# The commands each script runs, for ACL errors: Redis 7.0 does not name the command a script
# was refused (Valkey does), so the error lists the script's commands instead.
SCRIPT_COMMANDS = {
    "dead_letter": ("xpending", "xadd", "xack", "xinfo|groups", "xrange", "xlen", "time", "xtrim"),
    "add": ("xadd", "xinfo|groups", "xpending", "xrange", "xlen", "time", "xtrim"),
    "trim": ("xinfo|groups", "xpending", "xrange", "xlen", "time", "xtrim"),
    "replay": ("hget", "type", "xrange", "xinfo|stream", "xadd", "xdel", "hset"),
    "prune_consumers": ("xinfo|consumers", "xgroup|delconsumer"),
}


def script_by_sha(sha: str) -> str | None:
    """The name of streamlab's script whose SHA1 is ``sha``, or None."""
    for name in SCRIPT_COMMANDS:
        if hashlib.sha1(lua_source(name).encode()).hexdigest() == sha.lower():
            return name
    return None


_INCLUDE = "--!include "


@cache
def lua_source(name: str) -> str:
    """The text of ``streamlab/lua/<name>.lua``, each ``--!include <lib>`` line replaced by
    the text of ``lua/<lib>.lua`` (shared local functions, such as the safe trim)."""
    text = (resources.files("streamlab") / "lua" / f"{name}.lua").read_text()
    return "".join(
        lua_source(line[len(_INCLUDE) :].strip()) if line.startswith(_INCLUDE) else line
        for line in text.splitlines(keepends=True)
    )


class Scripts:
    """The scripts registered on one redis-py client (EVALSHA, loaded again on NOSCRIPT)."""

    def __init__(self, redis_client: Any) -> None:
        self._redis = redis_client

    def _register(self, name: str) -> Script:
        script: Script = self._redis.register_script(lua_source(name))
        return script

    @cached_property
    def dead_letter(self) -> Script:
        """See ``lua/dead_letter.lua``."""
        return self._register("dead_letter")

    @cached_property
    def replay(self) -> Script:
        """See ``lua/replay.lua``."""
        return self._register("replay")

    @cached_property
    def trim(self) -> Script:
        """See ``lua/trim.lua``."""
        return self._register("trim")

    @cached_property
    def add(self) -> Script:
        """See ``lua/add.lua``."""
        return self._register("add")

    @cached_property
    def prune_consumers(self) -> Script:
        """See ``lua/prune_consumers.lua``."""
        return self._register("prune_consumers")
