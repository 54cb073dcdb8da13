"""Typed records: every Redis reply streamlab reads, and the records it writes beside events.

The one place that knows the shape of XINFO GROUPS / CONSUMERS / STREAM, XPENDING (summary and
extended) and XCLAIM / XAUTOCLAIM replies (RESP2 or RESP3, names as bytes or text, raw or
through redis-py's callbacks): consumer, frames, replay and CLI turn replies into `GroupInfo`,
`ConsumerInfo`, `PendingEntry`, `PendingSummary`, `StreamInfo`, `claimed_ids` and
`AutoClaimPage` here and use nothing else.
It also holds the wire form of a DLQ entry's failure record (`Failure`, the ``dlq_*``
fields), of the `ReplayMarker` stamped on a replayed event, and the field-name aliases other
services write (``repo_name`` for ``repository``, the tenant inside ``auth_context``) and the
rules for reading them, which the decoder, the exporters and the replay selection all follow:
`FIELD_ALIASES` and `read_name` (streamlab's own name wins over an alias), `tenant_of` (the
tenant field, else the one inside ``auth_context``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from pydantic import AwareDatetime, BaseModel, Field

from streamlab.ids import entry_time

__all__ = [
    "AUTH_CONTEXT_FIELD",
    "AUTH_TENANT_KEY",
    "DLQ_FIELDS",
    "FIELD_ALIASES",
    "REPLAY_FIELDS",
    "REPLAY_PREFIX",
    "AutoClaimPage",
    "ConsumerInfo",
    "Failure",
    "GroupInfo",
    "MarkerStamp",
    "PendingEntry",
    "PendingSummary",
    "ReplayMarker",
    "StreamInfo",
    "aliases_of",
    "claimed_ids",
    "consumer_infos",
    "format_time",
    "group_infos",
    "last_generated_id",
    "pending_entries",
    "read_name",
    "tenant_of",
    "tenant_of_auth_context",
    "valid_replay_id",
]

# -- field names -------------------------------------------------------------------------------

# Field names of the failure record added to a DLQ entry, next to the original fields.
DLQ_FIELDS = (
    "dlq_error",
    "dlq_error_type",
    "dlq_traceback",
    "dlq_attempts",
    "dlq_source_stream",
    "dlq_source_id",
    "dlq_group",
    "dlq_consumer",
    "dlq_failed_at",
)
# Field names of the replay marker stamped on an event re-injected from the DLQ (`ReplayMarker`).
# Namespaced: a producer's own ``replay_group`` field is just data.
REPLAY_PREFIX = "streamlab:"
REPLAY_FIELDS = tuple(
    REPLAY_PREFIX + name
    for name in ("replay_id", "replay_of", "replay_count", "replayed_at", "replay_group")
)


# Platform services write these names; streamlab reads them as its own. The rule every reader
# follows (`decode_event`, the frames, the replay selection and its filters): when an entry has a
# field under more than one of its names, the first of `aliases_of` is read (streamlab's own
# name, then the aliases in the order listed here), whatever the entry's order, and the others
# are kept as fields of their own (`StreamEvent.extra`; a frame column under their own name).
FIELD_ALIASES = {
    "event_id": "id",
    "repo_name": "repository",
    "repo": "repository",
    "tenant": "tenant_id",
}
# The tenant rule (`tenant_of`): the tenant field, else this key of this JSON field.
AUTH_CONTEXT_FIELD = "auth_context"
AUTH_TENANT_KEY = "tenant_id"


def aliases_of(name: str) -> tuple[str, ...]:
    """``name`` and the other names its field is written under, in the order of precedence:
    streamlab's own first, then the aliases as `FIELD_ALIASES` lists them."""
    return (name, *(alias for alias, own in FIELD_ALIASES.items() if own == name))


# Field names are text in a decoded entry and bytes in a raw reply: the precedence of each,
# in both forms, so that `read_name` reads either without converting a name per call.
_N = TypeVar("_N", str, bytes)
_OWN_NAMES = frozenset(FIELD_ALIASES.values())
_PRECEDENCE: dict[str | bytes, tuple[str, ...] | tuple[bytes, ...]] = {
    **{own: aliases_of(own) for own in _OWN_NAMES},
    **{own.encode(): tuple(n.encode() for n in aliases_of(own)) for own in _OWN_NAMES},
}


def read_name(own: _N, names: Container[_N]) -> _N | None:
    """The name field ``own`` is read from in an entry whose field names are ``names``: the
    first of `aliases_of` (``own``'s) among them, or None when it has none of them. Names are
    text, or bytes for a raw reply's fields (``read_name(b"repository", raw)``)."""
    # The table holds each name's precedence in the name's own type (text or bytes).
    precedence: tuple[_N, ...] = _PRECEDENCE.get(own) or (own,)  # type: ignore[assignment]
    for name in precedence:
        if name in names:
            return name
    return None


class _HasTenant(Protocol):  # a decoded auth context (`streamlab.events.AuthContext`)
    @property
    def tenant_id(self) -> str: ...


def tenant_of(tenant: str | None, auth_context: _HasTenant | bytes | str | None) -> str:
    """The tenant an entry is read with: its tenant field (``tenant``: the value `read_name`
    picks for ``tenant_id``) unless that is missing (None) or empty, else the
    `AUTH_TENANT_KEY` inside its `AUTH_CONTEXT_FIELD` (decoded, or its raw JSON:
    `tenant_of_auth_context`); '' when neither has one. The event model, the decoder, the frames
    and the replay selection all take the tenant this way."""
    if tenant:
        return tenant
    if auth_context is None:
        return ""
    if isinstance(auth_context, bytes | str):
        return tenant_of_auth_context(auth_context) or ""
    value = getattr(auth_context, AUTH_TENANT_KEY, None)
    return value if isinstance(value, str) else ""


def tenant_of_auth_context(raw: bytes | str | None) -> str | None:
    """The `AUTH_TENANT_KEY` inside an ``auth_context`` JSON value, where an entry without a
    tenant field carries it (platform events); None when there is none or it does not parse."""
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    tenant = value.get(AUTH_TENANT_KEY) if isinstance(value, dict) else None
    return tenant if isinstance(tenant, str) and tenant else None


def _now() -> datetime:
    return datetime.now(UTC)


def format_time(value: datetime) -> str:
    """RFC 3339 with microseconds always present (``isoformat`` drops them when zero)."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")[:-6] + "Z"  # "+00:00" -> "Z"


# -- the failure record and the replay marker ---------------------------------------------------


class Failure(BaseModel):
    """The failure record of a dead-lettered entry (its ``dlq_*`` fields)."""

    error: str
    error_type: str
    traceback: str = ""
    attempts: int = 0
    source_stream: str = ""
    source_id: str = ""
    group: str = ""
    consumer: str = ""
    failed_at: AwareDatetime = Field(default_factory=_now)

    def to_fields(self) -> dict[str, str]:
        """The ``dlq_*`` fields to add to the original entry's fields."""
        return {
            "dlq_error": self.error,
            "dlq_error_type": self.error_type,
            "dlq_traceback": self.traceback,
            "dlq_attempts": str(self.attempts),
            "dlq_source_stream": self.source_stream,
            "dlq_source_id": self.source_id,
            "dlq_group": self.group,
            "dlq_consumer": self.consumer,
            "dlq_failed_at": format_time(self.failed_at),
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, bytes | str]) -> Failure | None:
        """Parse the ``dlq_*`` fields of an entry; None when it has no failure record."""
        if "dlq_error_type" not in fields and "dlq_error" not in fields:
            return None
        values: dict[str, Any] = {}
        for name in DLQ_FIELDS:
            if name in fields:
                raw = fields[name]
                values[name[4:]] = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        values.setdefault("error", "")
        values.setdefault("error_type", "")
        return cls.model_validate(values)


_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
_COUNT = re.compile(r"[1-9][0-9]{0,17}")
_R_ID, _R_OF, _R_COUNT, _R_AT, _R_GROUP = REPLAY_FIELDS
_R_GROUP_B = _R_GROUP.encode()


def valid_replay_id(value: str) -> bool:
    """A replay run id a marker can carry: 1-128 of ``A-Z a-z 0-9 . _ : -`` (a uuid4 fits)."""
    return _RUN_ID.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class ReplayMarker:
    """The marker streamlab stamps on an event it re-injects from a DLQ.

    On the wire it is the five ``streamlab:replay_*`` fields (`REPLAY_FIELDS`). A marker is
    recognised only as a whole: `from_fields` returns None unless every field is present and
    well formed, so an entry with some of these fields (or a producer's own ``replay_group``)
    is an ordinary event. ``group`` is the only group meant to handle the event ('' = every
    group); ``source_id`` is the DLQ entry id it came from; ``count`` how often the event has
    been replayed (1 the first time).
    """

    replay_id: str
    source_id: str
    count: int
    replayed_at: datetime
    group: str = ""

    def to_fields(self) -> dict[str, str]:
        """The marker's entry fields (the inverse of `from_fields`); `MarkerStamp` gives the
        same fields flattened to bytes."""
        return {
            _R_ID: self.replay_id,
            _R_OF: self.source_id,
            _R_COUNT: str(self.count),
            _R_AT: format_time(self.replayed_at),
            _R_GROUP: self.group,
        }

    @classmethod
    def from_fields(
        cls, fields: Mapping[str, bytes | str] | Mapping[bytes, bytes]
    ) -> ReplayMarker | None:
        """The complete marker in an entry's fields (names as text or bytes), else None."""
        get: Any = fields.get
        values: list[str] = []
        for name in REPLAY_FIELDS:
            raw = get(name)
            if raw is None:
                raw = get(name.encode())
            if raw is None:
                return None
            try:
                values.append(raw.decode() if isinstance(raw, bytes) else raw)
            except UnicodeDecodeError:
                return None
        run, source, count, at, group = values
        if not (
            _RUN_ID.fullmatch(run) and _STREAM_ID.fullmatch(source) and _COUNT.fullmatch(count)
        ):
            return None
        try:
            when = datetime.fromisoformat(at)
        except ValueError:
            return None
        if when.tzinfo is None:
            return None
        return cls(run, source, int(count), when.astimezone(UTC), group)

    @staticmethod
    def present(fields: Container[Any]) -> bool:
        """Cheap first test: does the entry carry a marker's group field at all? ``fields``
        is an entry's fields, or a decoded event's ``extra``."""
        return _R_GROUP in fields or _R_GROUP_B in fields


class MarkerStamp:
    """`ReplayMarker.to_fields` of one replay batch, flattened to bytes for its script calls.

    Replay stamps every event it injects; building and validating a `ReplayMarker` model per
    event cost more than the rest of the client's work. The run's id and the batch's time are
    validated once, in the `ReplayMarker` built here; each event's fields then only vary in
    ``source_id``, ``count`` and ``group``.
    """

    __slots__ = ("_at", "_names", "_run")

    def __init__(self, replay_id: str, replayed_at: datetime) -> None:
        template = ReplayMarker(
            replay_id=replay_id, source_id="0-0", count=0, replayed_at=replayed_at
        ).to_fields()
        self._names = [name.encode() for name in template]
        self._run = template[_R_ID].encode()
        self._at = template[_R_AT].encode()

    def fields(self, source_id: str, count: int, group: bytes) -> list[bytes]:
        """The flat marker fields of one event (name, value, ...), in `to_fields` order."""
        run, of, n, at, grp = self._names
        return [run, self._run, of, source_id.encode(), n, b"%d" % count, at, self._at, grp, group]


# -- replies -----------------------------------------------------------------------------------


def _text(value: Any) -> Any:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


def _pairs(raw: Mapping[Any, Any] | Sequence[Any]) -> Mapping[str, Any]:
    """An XINFO reply as ``{name: value}``, names as text: redis-py gives a dict (names as
    text or bytes), a raw RESP2 reply is a flat name, value list."""
    if isinstance(raw, Mapping):
        return {_text(k): v for k, v in raw.items()}
    return {_text(raw[i]): raw[i + 1] for i in range(0, len(raw) - 1, 2)}


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _ms(value: Any) -> int | None:
    # XINFO reports -1 for "never" (a consumer that never read successfully, Redis 7.2+).
    return None if value is None or int(value) < 0 else int(value)


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """One consumer group of a stream, from XINFO GROUPS.

    ``lag`` is None when Redis cannot compute it (after deletions, or before Redis 7);
    ``entries_read`` is None before Redis 7.
    """

    name: str
    consumers: int
    pending: int
    last_delivered_id: str
    lag: int | None
    entries_read: int | None

    @classmethod
    def from_reply(cls, raw: Mapping[Any, Any] | Sequence[Any]) -> GroupInfo:
        """One group of an XINFO GROUPS reply."""
        g = _pairs(raw)
        return cls(
            name=_text(g["name"]),
            consumers=int(g.get("consumers") or 0),
            pending=int(g.get("pending") or 0),
            last_delivered_id=_text(g.get("last-delivered-id")) or "0-0",
            lag=_int(g.get("lag")),
            entries_read=_int(g.get("entries-read")),
        )

    @property
    def last_delivered(self) -> datetime | None:
        """When the last entry delivered to the group was added; None when none was."""
        return None if self.last_delivered_id == "0-0" else entry_time(self.last_delivered_id)


def group_infos(reply: Iterable[Any]) -> list[GroupInfo]:
    """Every group of an XINFO GROUPS reply."""
    return [GroupInfo.from_reply(g) for g in reply]


@dataclass(frozen=True, slots=True)
class ConsumerInfo:
    """One consumer of a group, from XINFO CONSUMERS.

    ``idle_ms``: since its last attempted read or claim; ``inactive_ms``: since its last
    successful one (None before Redis 7.2, and for a consumer that never read).
    """

    name: str
    pending: int
    idle_ms: int | None
    inactive_ms: int | None

    @classmethod
    def from_reply(cls, raw: Mapping[Any, Any] | Sequence[Any]) -> ConsumerInfo:
        """One consumer of an XINFO CONSUMERS reply."""
        c = _pairs(raw)
        return cls(
            name=_text(c["name"]),
            pending=int(c.get("pending") or 0),
            idle_ms=_ms(c.get("idle")),
            inactive_ms=_ms(c.get("inactive")),
        )


def consumer_infos(reply: Iterable[Any]) -> list[ConsumerInfo]:
    """Every consumer of an XINFO CONSUMERS reply."""
    return [ConsumerInfo.from_reply(c) for c in reply]


@dataclass(frozen=True, slots=True)
class PendingEntry:
    """One row of an extended XPENDING reply: an entry delivered to ``consumer`` and not acked,
    idle (since its last delivery) ``idle_ms``, delivered ``deliveries`` times."""

    id: str
    consumer: str
    idle_ms: int
    deliveries: int

    @classmethod
    def from_reply(cls, row: Mapping[str, Any] | Sequence[Any]) -> PendingEntry:
        """A raw row ``[id, consumer, idle, deliveries]`` or redis-py's ``xpending_range``
        dict."""
        if isinstance(row, Mapping):
            return cls(
                _text(row["message_id"]),
                _text(row["consumer"]),
                int(row["time_since_delivered"]),
                int(row["times_delivered"]),
            )
        return cls(_text(row[0]), _text(row[1]), int(row[2]), int(row[3]))


def pending_entries(reply: Iterable[Any]) -> list[PendingEntry]:
    """Every row of an extended XPENDING reply (raw or from ``xpending_range``)."""
    return [PendingEntry.from_reply(row) for row in reply]


@dataclass(frozen=True, slots=True)
class PendingSummary:
    """The summary form of XPENDING (``XPENDING stream group``): how many entries the group
    has pending, the smallest and largest pending id (None when nothing is pending) and how
    many each consumer holds (only consumers holding some are listed)."""

    count: int
    min_id: str | None
    max_id: str | None
    consumers: dict[str, int]

    @classmethod
    def from_reply(cls, reply: Mapping[str, Any] | Sequence[Any]) -> PendingSummary:
        """A raw reply ``[count, min, max, [[consumer, count], ...]]`` or redis-py's
        ``xpending`` dict (``pending``, ``min``, ``max``, ``consumers``)."""
        if isinstance(reply, Mapping):
            count, low, high = reply["pending"], reply["min"], reply["max"]
            held = [(c["name"], c["pending"]) for c in reply["consumers"] or ()]
        else:
            count, low, high, rows = reply
            held = [(name, n) for name, n in rows or ()]
        return cls(
            int(count),
            None if low is None else str(_text(low)),
            None if high is None else str(_text(high)),
            {str(_text(name)): int(n) for name, n in held},
        )

    def held_by(self, consumer: str) -> int:
        """How many entries ``consumer`` holds pending (0 for one the group does not know)."""
        return self.consumers.get(consumer, 0)


def last_generated_id(reply: Mapping[Any, Any] | Sequence[Any]) -> str:
    """The ``last-generated-id`` of an XINFO STREAM reply: the id ``XADD *`` moves past."""
    return str(_text(_pairs(reply)["last-generated-id"]))


@dataclass(slots=True)
class StreamInfo:
    """A stream's length, first and last entries, and its consumer groups."""

    stream: str
    length: int
    first_id: str | None
    last_id: str | None
    groups: list[GroupInfo] = field(default_factory=list)

    @property
    def first_time(self) -> datetime | None:
        """Time of the first entry, from its id."""
        return entry_time(self.first_id) if self.first_id else None

    @property
    def last_time(self) -> datetime | None:
        """Time of the last entry, from its id."""
        return entry_time(self.last_id) if self.last_id else None


def _entry_id(entry: Any) -> str | None:
    # A claimed entry: an id (JUSTID), a raw ``[id, fields]`` or redis-py's ``(id, fields)``;
    # redis-py gives ``(None, None)`` for an entry deleted before the claim (Redis < 7).
    if isinstance(entry, list | tuple):
        entry = entry[0]
    return None if entry is None else str(_text(entry))


def claimed_ids(reply: Iterable[Any]) -> list[str]:
    """The ids of the entries an XCLAIM reply holds (with or without JUSTID, raw or through
    redis-py), in reply order; entries deleted before the claim are left out."""
    return [i for i in map(_entry_id, reply) if i is not None]


@dataclass(frozen=True, slots=True)
class AutoClaimPage:
    """One XAUTOCLAIM reply: the ids of the entries claimed, where the next call starts
    (``"0-0"`` once the whole pending list was scanned: `done`) and the ids of pending
    entries found deleted from the stream, which XAUTOCLAIM drops from the pending list
    (Redis 7+; empty before)."""

    next_id: str
    ids: list[str]
    deleted: list[str]

    @classmethod
    def from_reply(cls, reply: Sequence[Any]) -> AutoClaimPage:
        """A raw reply or redis-py's ``xautoclaim`` one (entries, or ids with JUSTID)."""
        cursor, entries, *rest = reply
        deleted = [str(_text(i)) for i in rest[0]] if rest else []
        return cls(str(_text(cursor)), claimed_ids(entries), deleted)

    @property
    def done(self) -> bool:
        """Whether the scan of the pending list is complete (the cursor is back at 0-0)."""
        return self.next_id == "0-0"
