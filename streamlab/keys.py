"""Key layout: every derived key name comes from the stream name here, and nowhere else."""

from __future__ import annotations

import re
from typing import Any

from redis.crc import key_slot

from streamlab.errors import ConfigError

__all__ = [
    "DLQ_SUFFIX",
    "check_same_slot",
    "check_start_id",
    "dlq_key",
    "is_cluster",
    "ledger_key",
    "replayed_key",
    "retry_due_key",
]

DLQ_SUFFIX = "_dlq"


def dlq_key(stream: str, override: str | None = None) -> str:
    """The DLQ stream of ``stream``: ``override`` when given, else ``<stream>_dlq``.

    On Redis Cluster name the stream with a hash tag (``{webhook_events}``) so that
    ``{webhook_events}_dlq`` lands in the same slot.
    """
    return override if override else f"{stream}{DLQ_SUFFIX}"


_START_ID = re.compile(r"([0-9]+)(?:-([0-9]+))?")
_ID_PART_MAX = 2**64 - 1


def check_start_id(value: str) -> str:
    """``value`` when it is a consumer group's start id, else `ValueError` saying what is.

    Accepted: ``$`` (only entries added after the group is created), ``0`` (the whole
    stream), or a stream id ``<ms>`` / ``<ms>-<seq>``, each part at most 2**64 - 1.
    """
    match = _START_ID.fullmatch(value) if value != "$" else None
    if value == "$" or (match and all(int(p or 0) <= _ID_PART_MAX for p in match.groups())):
        return value
    raise ValueError(
        f"{value!r} is not a group start id: use '$' (new entries only), '0' (the whole "
        "stream) or a stream id like '1700000000000-0'"
    )


def replayed_key(dlq: str) -> str:
    """The hash marking entries of ``dlq`` replayed with ``keep_in_dlq=True``."""
    return f"{dlq}:replayed"


def ledger_key(dlq: str, replay_id: str) -> str:
    """The hash recording what replay run ``replay_id`` injected from ``dlq``."""
    return f"{dlq}:replay:{replay_id}"


def retry_due_key(stream: str, group: str) -> str:
    """The sorted set of ``group``'s waiting retries on ``stream``: member = entry id, score =
    when the retry is due (Unix ms). A hash-tagged stream (``{webhook_events}``) keeps it in
    the stream's cluster slot."""
    return f"{stream}:retry-due:{group}"


def is_cluster(redis_client: Any) -> bool:
    """True when ``redis_client`` talks to a Redis Cluster."""
    from redis.cluster import RedisCluster

    return isinstance(redis_client, RedisCluster)


def check_same_slot(*keys: str) -> None:
    """Raise `ConfigError` unless all keys hash to one cluster slot.

    Atomic multi-key steps (dead-letter, replay) run as one Lua script, which Redis Cluster
    only allows within one slot. Checking at configuration time turns a CROSSSLOT error at
    run time into a message that names the keys and the fix.
    """
    slots = {key: key_slot(key.encode()) for key in keys}
    if len(set(slots.values())) > 1:
        listing = ", ".join(f"{k!r} (slot {s})" for k, s in slots.items())
        first = keys[0].strip("{}")
        raise ConfigError(
            f"keys {listing} are in different cluster slots, so they cannot be updated "
            f"atomically; name the stream with a hash tag, e.g. '{{{first}}}', so that its "
            f"DLQ '{{{first}}}{DLQ_SUFFIX}' shares its slot"
        )
