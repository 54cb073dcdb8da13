"""The atomic moves for entries too large for a Lua script: WATCH, check, MULTI … EXEC.

Lua cannot call a command with more than about 8,000 arguments (``unpack`` stops there), so an
entry of ~4,000 fields cannot pass through ``lua/dead_letter.lua`` or ``lua/replay.lua``. Such
entries take this path instead, with the same checks and the same result. Every condition the
script checks is checked here under WATCH, and everything that could make a queued command fail
at EXEC time (a key of the wrong type, a stream whose last id is the maximum) is checked before
MULTI: EXEC has no rollback either. Under ``maxmemory`` the server refuses the whole EXEC.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Final

import redis

from streamlab.ids import parse_id
from streamlab.keys import is_cluster
from streamlab.records import last_generated_id, pending_entries
from streamlab.scripts import Scripts

__all__ = ["MAX_ID", "dead_letter_tx", "exhausted", "replay_tx"]

MAX_ID: Final = "18446744073709551615-18446744073709551615"
# A WATCH fails when any client writes a watched key (a busy stream): retry, but not forever.
_WATCH_TRIES: Final = 100
_log = logging.getLogger("streamlab")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _last_id(r: Any, key: str) -> str | None:
    """Stream ``key``'s last generated id, or None when there is no such key."""
    try:
        info = r.xinfo_stream(key)
    except redis.ResponseError as exc:
        if "no such key" in str(exc):
            return None
        raise
    return last_generated_id(info)


def exhausted(r: Any, key: str) -> bool:
    """True when stream ``key``'s last id is the maximum, so that ``XADD *`` must fail."""
    return _last_id(r, key) == MAX_ID


def _next_id(r: Any, last: str | None, clock: Callable[[], Any] | None = None) -> str:
    """The id ``XADD *`` would give now after ``last``: the server's time (``clock()``, by
    default ``r.time()``), or just past it."""
    secs, micros = (clock or r.time)()
    now = int(secs) * 1000 + int(micros) // 1000
    last_ms, last_seq = parse_id(last or "0-0")
    if now > last_ms:
        return f"{now}-0"
    if last_seq < 2**64 - 1:
        return f"{last_ms}-{last_seq + 1}"
    return f"{last_ms + 1}-0"


def _check_stream(pipe: Any, key: str) -> str | None:
    """Raise what ``XADD key *`` would fail on; return the stream's last id (None if new)."""
    kind = _text(pipe.type(key))
    if kind not in ("stream", "none"):
        raise redis.ResponseError(f"WRONGTYPE key {key!r} holds a {kind}, not a stream")
    last = _last_id(pipe, key) if kind == "stream" else None
    if last == MAX_ID:
        raise redis.ResponseError(
            f"ERR stream {key!r} has exhausted the last possible ID, unable to add more items"
        )
    return last


def _execute(pipe: Any) -> list[Any]:
    """EXEC the transaction. "EXEC without MULTI" means the server refused MULTI, which only
    an ACL does: say so, naming the command, rather than the confusing EXEC error."""
    try:
        replies: list[Any] = pipe.execute()
    except redis.ResponseError as exc:
        if "EXEC without MULTI" not in str(exc):
            raise
        raise redis.exceptions.NoPermissionError(
            "this user has no permissions to run the 'multi' command"
        ) from exc
    return replies


def _watch_failed(what: str) -> redis.WatchError:
    return redis.WatchError(
        f"{what}: the keys kept changing during {_WATCH_TRIES} tries; nothing was written"
    )


def dead_letter_tx(r: Any, keys: Sequence[str], args: Sequence[Any]) -> bytes | None:
    """`lua/dead_letter.lua` as a transaction, with the script's KEYS and ARGV; the new DLQ
    id, or None when the entry is no longer pending for that consumer."""
    stream, dlq = keys
    group, entry_id, owner, maxlen, retention_ms = (_text(a) for a in args[:5])
    with r.pipeline(transaction=True) as pipe:
        for _ in range(_WATCH_TRIES):
            try:
                pipe.watch(stream, dlq)
                rows = pending_entries(pipe.xpending_range(stream, group, entry_id, entry_id, 1))
                if not rows or (owner and rows[0].consumer != owner):
                    return None
                _check_stream(pipe, dlq)
                pipe.multi()
                pipe.execute_command("XADD", dlq, "*", *args[5:])
                pipe.xack(stream, group, entry_id)
                new_id: bytes = _execute(pipe)[0]
                break
            except redis.WatchError:
                continue
        else:
            raise _watch_failed(f"dead-lettering entry {entry_id} of {stream!r}")
    if maxlen != "0" or retention_ms:
        # After EXEC, as the script trims after its XACK: a failed trim leaves the DLQ longer.
        try:
            Scripts(r).trim(keys=[dlq], args=[maxlen, retention_ms])
        except redis.RedisError as exc:
            _log.warning("DLQ %r not trimmed after dead-lettering %s: %s", dlq, entry_id, exc)
    return new_id


def replay_tx(
    r: Any,
    keys: Sequence[str],
    *,
    entry_id: str,
    dry_run: bool,
    keep_in_dlq: bool,
    replay_id: str,
    group: bytes,
    fields: Sequence[bytes],
) -> list[bytes]:
    """`lua/replay.lua` as a transaction, with the same ``[status, detail]`` reply."""
    dlq, target, replayed, ledger = keys
    clock = None
    if is_cluster(r):
        # A cluster pipeline refuses keyless commands (TIME): ask the target's node itself.
        # Read before EXEC, that time only seeds the id; `_next_id` keeps it past the last id.
        node = r.get_node_from_key(target)
        clock = lambda: r.time(target_nodes=node)  # noqa: E731
    with r.pipeline(transaction=True) as pipe:
        for _ in range(_WATCH_TRIES):
            try:
                pipe.watch(dlq, target, replayed, ledger)
                marker = pipe.hget(replayed, entry_id)
                if marker:
                    return [b"marked", marker]
                kind = _text(pipe.type(target))
                if kind not in ("stream", "none"):
                    return [b"wrongtype", kind.encode()]
                if not pipe.xrange(dlq, entry_id, entry_id, count=1):
                    done = pipe.hget(ledger, entry_id)
                    return [b"done", done] if done else [b"gone", b""]
                if dry_run:
                    full = kind == "stream" and exhausted(pipe, target)
                    return [b"full" if full else b"dry", b""]
                last = _check_stream(pipe, target)
                # MULTI cannot feed XADD's reply to the ledger: pick the id here, under the
                # WATCH of the target, so that nobody can add a larger one before EXEC.
                new_id = _next_id(pipe, last, clock)
                pipe.multi()
                pipe.execute_command("XADD", target, new_id, *fields)
                if keep_in_dlq:
                    pipe.hset(replayed, entry_id, f"{replay_id}\n{new_id}\n{target}")
                else:
                    pipe.xdel(dlq, entry_id)
                pipe.hset(
                    ledger, entry_id, b"%s\n%s\n%s" % (new_id.encode(), group, target.encode())
                )
                _execute(pipe)
                return [b"ok", new_id.encode()]
            except redis.WatchError:
                continue
    raise _watch_failed(f"replaying DLQ entry {entry_id} of {dlq!r}")
