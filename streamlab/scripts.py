"""Lua scripts for the atomic multi-key steps, loaded from ``streamlab/lua`` once per client.

Every key a script touches is passed in KEYS (never built inside the script), which keeps the
scripts valid on Redis Cluster when the keys share a hash tag.
"""

from __future__ import annotations

from functools import cache, cached_property
from importlib import resources
from typing import Any

from redis.commands.core import Script

__all__ = ["LUA_MAX_VALUES", "Scripts", "lua_source"]

# Lua's unpack (and so a redis.call built from ARGV) stops at about 8,000 values; keep well
# below it. Larger entries are moved by `streamlab._moves` with WATCH/MULTI instead.
LUA_MAX_VALUES = 7000


@cache
def lua_source(name: str) -> str:
    """The text of ``streamlab/lua/<name>.lua``."""
    return (resources.files("streamlab") / "lua" / f"{name}.lua").read_text()


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
    def prune_consumers(self) -> Script:
        """See ``lua/prune_consumers.lua``."""
        return self._register("prune_consumers")
