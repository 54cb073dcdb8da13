"""Replay: send dead-lettered events back to their stream, atomically and exactly once.

The flow is select, look, (try), replay, follow up::

    sel = select_dlq(client, "{webhooks}", error_types=["TimeoutError"])   # what is there
    try_handler(fixed_handler, sel)                  # does the fix work? (writes nothing)
    replay_dlq(client, "{webhooks}", sel, dry_run=True)                      # what would happen
    report = replay_dlq(client, "{webhooks}", sel)                           # do it
    replay_outcome(client, "{webhooks}", report.replay_id)                   # did it work?

How a replay is made safe
-------------------------
Each event is replayed by one Lua script (``lua/replay.lua``) that checks the DLQ entry still
exists (and is not marked replayed), XDELs it (or marks it) and XADDs the event to the target,
all in one step. Two concurrent replays of one selection therefore inject each event once: the
script is the arbiter, the second caller finds the entry gone and reports it as skipped. A
replay killed half-way leaves every event either replayed (and gone from the DLQ) or still in
the DLQ, so running it again continues where it stopped. Script calls are pipelined in
batches; nothing is done one round trip per entry.

What is written
---------------
The original entry fields, byte for byte and in their order, minus the ``dlq_*`` failure
fields and any earlier replay marker; ``retry_count`` set to ``0`` (added when missing); and
the replay marker `streamlab.events.REPLAY_FIELDS`: ``replay_id`` (the run), ``replay_of``
(the DLQ entry id), ``replay_count`` (the previous count + 1, so events cycling between the
DLQ and the stream show up), ``replayed_at`` (RFC 3339) and ``replay_group`` (by default the
group the event failed in, so other groups on the stream ack and skip it: a failure is
retried for its own group only; ``for_group=None`` lets every group see it).

Bookkeeping keys (derived from the DLQ name, so they share its hash tag on Redis Cluster)
-------------------------------------------------------------------------------------------
- ``<dlq>:replayed`` (`replayed_key`): hash, DLQ id -> ``replay_id\\nnew id\\ntarget``. Stream
  entries cannot be edited, so with ``keep_in_dlq=True`` this marks an entry as replayed; every
  replay consults it, so a kept entry is never injected twice.
- ``<dlq>:replay:<replay_id>`` (`ledger_key`): hash of one run, DLQ id ->
  ``new id\\nreplay group\\ntarget``, expiring after ``ledger_ttl`` (30 days by default).
  `replay_outcome` reads it, and a rerun with the same ``replay_id`` reports the events it
  already replayed as such.

Markers of kept entries outlive the entries when the DLQ is trimmed later: a hash field each,
harmless (DLQ ids are never reused), and removable with HDEL or by deleting the hash once the
DLQ is empty.
"""

from __future__ import annotations

import html
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Protocol

import redis

from streamlab._progress import progress_bar
from streamlab.client import RedisStreamsClient, seconds, translate_errors
from streamlab.errors import ConfigError
from streamlab.events import DLQ_FIELDS, REPLAY_FIELDS, StreamMessage, decode_message, format_time
from streamlab.keys import check_same_slot, is_cluster, ledger_key, replayed_key

if TYPE_CHECKING:
    import pandas as pd

    from streamlab.events import StreamEvent

__all__ = [
    "DEFAULT_LEDGER_TTL",
    "FAILED_GROUP",
    "ReplayReport",
    "ReplaySelection",
    "ledger_key",
    "replay_dlq",
    "replay_outcome",
    "replayed_key",
    "select_dlq",
    "try_handler",
]

PAGE: Final = 1000
DEFAULT_LEDGER_TTL: Final = timedelta(days=30)

_DLQ_B = frozenset(name.encode() for name in DLQ_FIELDS)
_DROP = _DLQ_B | frozenset(name.encode() for name in REPLAY_FIELDS)
_REPO_KEYS = (b"repository", b"repo_name", b"repo")
_TENANT_KEYS = (b"tenant_id", b"tenant")
_ID = re.compile(r"^(\d+)-(\d+)$")
_FILTERS = frozenset(
    {"event_types", "tenants", "repositories", "error_types", "error_contains"}
    | {"since", "until", "ids", "where", "limit"}
)


class _FailedGroup:
    """Sentinel: stamp ``replay_group`` with the group the event failed in (``dlq_group``)."""

    def __repr__(self) -> str:
        return "FAILED_GROUP"


FAILED_GROUP: Final = _FailedGroup()


class _Cancel(Protocol):
    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


def _as_client(client: Any) -> RedisStreamsClient:
    if isinstance(client, RedisStreamsClient):
        return client
    if isinstance(client, redis.Redis) or hasattr(client, "xadd"):
        return RedisStreamsClient(client)
    raise TypeError(
        f"client must be a RedisStreamsClient or a redis-py client, not {type(client).__name__}"
    )


def _parse_id(value: Any, what: str) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else str(value)
    match = _ID.match(text.strip())
    if not match:
        raise ConfigError(f"{what}: {value!r} is not a stream id like '1700000000000-0'")
    return int(match[1]), int(match[2])


def _id_text(parsed: tuple[int, int]) -> str:
    return f"{parsed[0]}-{parsed[1]}"


# -- DLQ entries -------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Entry:
    """One DLQ entry as read: its id and raw fields (names and values as bytes)."""

    id: str
    raw: dict[bytes, bytes]
    _message: StreamMessage | None = None

    def text(self, name: bytes) -> str:
        value = self.raw.get(name)
        return "" if value is None else value.decode("utf-8", "replace")

    def first(self, names: Sequence[bytes]) -> str:
        # Mirrors decode_event: of several aliases, the first one in entry order wins.
        for key, value in self.raw.items():
            if key in names:
                return value.decode("utf-8", "replace")
        return ""

    @property
    def event_type(self) -> str:
        return self.text(b"event_type")

    @property
    def repository(self) -> str:
        return self.first(_REPO_KEYS)

    @property
    def tenant(self) -> str:
        tenant = self.first(_TENANT_KEYS)
        if tenant or b"auth_context" not in self.raw:
            return tenant
        try:
            auth = json.loads(self.raw[b"auth_context"])
        except ValueError:
            return ""
        return str(auth.get("tenant_id") or "") if isinstance(auth, dict) else ""

    def message(self, dlq: str) -> StreamMessage:
        """The DLQ entry decoded (``failure`` set; ``event`` None when it does not decode)."""
        if self._message is None:
            self._message = decode_message(dlq, self.id, self.raw)
        return self._message

    def original(self, retry_count: bytes = b"0") -> list[bytes]:
        """Flat name, value list of the event to inject: dlq_* and old marker fields dropped."""
        flat: list[bytes] = []
        seen_retry = False
        for name, value in self.raw.items():
            if name in _DROP:
                continue
            if name == b"retry_count":
                seen_retry = True
                flat += (name, retry_count)
            else:
                flat += (name, value)
        if not seen_retry:
            flat += (b"retry_count", retry_count)
        return flat


def _page(r: Any, key: str, start: str, end: str) -> Iterator[tuple[bytes, dict[bytes, bytes]]]:
    """Entries of ``key`` from ``start`` to ``end``, paged (COUNT 1000, exclusive restart)."""
    while True:
        with translate_errors(key):
            batch = r.xrange(key, start, end, count=PAGE)
        yield from batch
        if len(batch) < PAGE:
            return
        start = "(" + batch[-1][0].decode()


# -- selection ---------------------------------------------------------------------------------


def _strings(value: str | Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str | bytes):
        value = [value.decode() if isinstance(value, bytes) else value]
    return frozenset(str(v) for v in value)


def _bound_ms(value: datetime | timedelta | str, name: str) -> int:
    if isinstance(value, timedelta):
        value = datetime.now(UTC) - value
    if isinstance(value, str):
        if re.fullmatch(r"\d+(-\d+)?", value.strip()):
            return int(value.split("-")[0])
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"{name}: {value!r} is neither a time nor a stream id") from None
    if not isinstance(value, datetime):
        raise ConfigError(f"{name}: expected a datetime, timedelta or stream id, got {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


@dataclass(slots=True)
class _Filter:
    ids: frozenset[str] | None = None
    event_types: frozenset[str] | None = None
    tenants: frozenset[str] | None = None
    repositories: frozenset[str] | None = None
    error_types: frozenset[str] | None = None
    error_contains: str | None = None
    where: Callable[[StreamEvent], bool] | None = None

    def match(self, entry: _Entry, dlq: str) -> bool:
        # Cheapest tests first; the decode for `where` only when all others passed.
        if self.ids is not None and entry.id not in self.ids:
            return False
        if self.error_types is not None and entry.text(b"dlq_error_type") not in self.error_types:
            return False
        if self.error_contains is not None and (
            self.error_contains not in entry.text(b"dlq_error").casefold()
        ):
            return False
        if self.event_types is not None and entry.event_type not in self.event_types:
            return False
        if self.repositories is not None and entry.repository not in self.repositories:
            return False
        if self.tenants is not None and entry.tenant not in self.tenants:
            return False
        return self.where is None or self._where(entry, dlq)

    def _where(self, entry: _Entry, dlq: str) -> bool:
        assert self.where is not None
        event = entry.message(dlq).event
        if event is None:
            return False
        try:
            return bool(self.where(event))
        except Exception as exc:
            exc.add_note(f"in the `where` predicate, on DLQ entry {entry.id} of {dlq!r}")
            raise


class ReplaySelection:
    """DLQ entries chosen for replay; made by `select_dlq`.

    ``len(sel)`` counts them, ``sel.ids`` lists their DLQ ids (oldest first), iterating gives
    the decoded DLQ messages (`StreamMessage` with ``failure``; ``event`` None when the entry
    does not decode), `summary` counts them by error type, event type, source and group,
    `to_dataframe` gives one row each, and a notebook shows a summary and the first rows.
    ``missing_ids`` lists ids asked for with ``ids=`` that are not in the DLQ.
    """

    def __init__(
        self,
        stream: str,
        dlq: str,
        entries: list[_Entry],
        *,
        filters: Mapping[str, Any] | None = None,
        missing_ids: Sequence[str] = (),
    ) -> None:
        self.stream = stream
        self.dlq = dlq
        self._entries = entries
        self.filters = dict(filters or {})
        self.missing_ids = list(missing_ids)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[StreamMessage]:
        return (entry.message(self.dlq) for entry in self._entries)

    @property
    def ids(self) -> list[str]:
        """DLQ entry ids, oldest first."""
        return [entry.id for entry in self._entries]

    def summary(self) -> dict[str, dict[str, int]]:
        """Counts by ``error_type``, ``event_type``, ``source_stream`` and ``group``."""
        columns = {
            "error_type": b"dlq_error_type",
            "event_type": b"event_type",
            "source_stream": b"dlq_source_stream",
            "group": b"dlq_group",
        }
        return {
            name: dict(Counter(e.text(key) or "-" for e in self._entries).most_common())
            for name, key in columns.items()
        }

    def _headline(self) -> str:
        text = f"ReplaySelection: {len(self):,} entries of DLQ {self.dlq!r}"
        if self._entries:
            first, last = self._entries[0].id, self._entries[-1].id
            text += f", dead-lettered {_when(first)} .. {_when(last)}"
        return text

    def __repr__(self) -> str:
        lines = [self._headline()]
        if self.filters:
            lines.append("  filters: " + ", ".join(f"{k}={v!r}" for k, v in self.filters.items()))
        for name, counts in self.summary().items():
            top = ", ".join(f"{k} {n:,}" for k, n in list(counts.items())[:5])
            more = f" (+{len(counts) - 5} more)" if len(counts) > 5 else ""
            lines.append(f"  {name}: {top}{more}")
        if self.missing_ids:
            lines.append(f"  not in the DLQ: {len(self.missing_ids):,} of the ids asked for")
        return "\n".join(lines)

    def to_dataframe(self) -> pd.DataFrame:
        """One row per entry: ``id``, ``ts`` (when dead-lettered), the event's ``event_id``,
        ``event_type``, ``tenant_id``, ``repository``, and the failure: ``error_type``,
        ``error``, ``attempts``, ``source_stream``, ``source_id``, ``group``, ``consumer``,
        ``failed_at``, plus ``replay_count`` (how often the event was replayed before)."""
        import pandas as pd

        es = self._entries
        frame = pd.DataFrame(
            {
                "id": pd.Series([e.id for e in es], dtype="str"),
                "ts": _ids_to_ts(pd, [e.id for e in es]),
                "event_id": pd.Series([e.first((b"id", b"event_id")) for e in es], dtype="str"),
                "event_type": [e.event_type for e in es],
                "tenant_id": [e.tenant for e in es],
                "repository": [e.repository for e in es],
                "error_type": [e.text(b"dlq_error_type") for e in es],
                "error": pd.Series([e.text(b"dlq_error") for e in es], dtype="str"),
                "attempts": _ints(pd, [e.text(b"dlq_attempts") for e in es]),
                "source_stream": [e.text(b"dlq_source_stream") for e in es],
                "source_id": pd.Series([e.text(b"dlq_source_id") for e in es], dtype="str"),
                "group": [e.text(b"dlq_group") for e in es],
                "consumer": [e.text(b"dlq_consumer") for e in es],
                "failed_at": pd.to_datetime(
                    pd.Series([e.text(b"dlq_failed_at") or None for e in es], dtype="object"),
                    format="ISO8601",
                    utc=True,
                    errors="coerce",
                ),
                "replay_count": _ints(pd, [e.text(b"replay_count") or "0" for e in es]),
            }
        )
        for name in ("event_type", "tenant_id", "repository", "error_type", "source_stream"):
            frame[name] = frame[name].astype("category")
        for name in ("group", "consumer"):
            frame[name] = frame[name].astype("category")
        return frame

    def _repr_html_(self) -> str:
        head = self.to_dataframe().head(20)
        counts = "".join(
            f"<li><b>{html.escape(name)}</b>: "
            + html.escape(", ".join(f"{k} {n:,}" for k, n in list(c.items())[:8]))
            + "</li>"
            for name, c in self.summary().items()
        )
        more = f"<p>… {len(self) - 20:,} more rows</p>" if len(self) > 20 else ""
        return (
            f"<p><b>{html.escape(self._headline())}</b></p><ul>{counts}</ul>"
            f"{head.to_html(index=False)}{more}"
        )


def _when(entry_id: str) -> str:
    ms = int(entry_id.split("-", 1)[0])
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ids_to_ts(pd: Any, ids: list[str]) -> Any:
    ms = pd.Series([int(i.split("-", 1)[0]) for i in ids], dtype="int64")
    return pd.to_datetime(ms, unit="ms", utc=True).astype("datetime64[ms, UTC]")


def _ints(pd: Any, values: list[str]) -> Any:
    return pd.to_numeric(pd.Series(values, dtype="object"), errors="coerce").astype("Int64")


def _ids_arg(ids: Any) -> frozenset[str]:
    # A pandas Series / Index (or any iterable) of ids: iterate it, no pandas import needed.
    values = ids.tolist() if hasattr(ids, "tolist") else ids
    if isinstance(values, str | bytes):
        values = [values]
    return frozenset(_id_text(_parse_id(v, "ids")) for v in values)


def select_dlq(
    client: RedisStreamsClient | redis.Redis,
    stream: str,
    *,
    event_types: str | Iterable[str] | None = None,
    tenants: str | Iterable[str] | None = None,
    repositories: str | Iterable[str] | None = None,
    error_types: str | Iterable[str] | None = None,
    error_contains: str | None = None,
    since: datetime | timedelta | str | None = None,
    until: datetime | timedelta | str | None = None,
    ids: Iterable[str] | Any | None = None,
    where: Callable[[StreamEvent], bool] | None = None,
    limit: int | None = None,
) -> ReplaySelection:
    """Choose entries of the DLQ of ``stream`` (the source stream's name) for replay.

    All filters given must match (AND); a list matches any of its values (OR):

    - ``event_types``, ``tenants``, ``repositories``: the event's type, tenant (``tenant_id``,
      else ``auth_context.tenant_id``) and repository (``repository`` / ``repo_name``), read
      from the raw fields like `decode_event` does, so entries that do not decode (DLQ'd as
      ``DecodeError``) are still selectable by them, e.g. after fixing a producer;
    - ``error_types``: exact ``dlq_error_type`` (``"DecodeError"`` selects undecodable entries);
    - ``error_contains``: case-insensitive substring of ``dlq_error``;
    - ``since`` / ``until``: when the entry was dead-lettered (its DLQ stream id), inclusive; a
      datetime (naive means UTC), a timedelta (that long ago) or a stream id;
    - ``ids``: DLQ entry ids, a list or a pandas Series / Index (e.g. a filtered
      ``dlq_to_dataframe(...)["id"]``); ids not in the DLQ are listed in ``missing_ids``;
    - ``where``: a predicate on the decoded `StreamEvent`; it is never called for entries that
      do not decode, which therefore never match a ``where`` filter;
    - ``limit``: at most that many entries, oldest first.

    The DLQ is read in pages of 1000 (XRANGE), bounded by ``since``, ``until`` and ``ids``.
    """
    c = _as_client(client)
    dlq = c.dlq_stream(stream)
    wanted = None if ids is None else _ids_arg(ids)
    start, end = _range(since, until, wanted)
    flt = _Filter(
        ids=wanted,
        event_types=_strings(event_types),
        tenants=_strings(tenants),
        repositories=_strings(repositories),
        error_types=_strings(error_types),
        error_contains=None if error_contains is None else error_contains.casefold(),
        where=where,
    )
    if limit is not None and limit < 0:
        raise ConfigError(f"limit: must be >= 0, got {limit}")
    chosen: list[_Entry] = []
    if limit != 0 and (wanted is None or wanted) and start is not None:
        for raw_id, raw in _page(c.redis, dlq, start, end):
            entry = _Entry(raw_id.decode(), raw)
            if flt.match(entry, dlq):
                chosen.append(entry)
                if limit is not None and len(chosen) >= limit:
                    break
    given = {
        "event_types": event_types,
        "tenants": tenants,
        "repositories": repositories,
        "error_types": error_types,
        "error_contains": error_contains,
        "since": since,
        "until": until,
        "ids": None if wanted is None else f"<{len(wanted)} ids>",
        "where": where,
        "limit": limit,
    }
    found = {e.id for e in chosen}
    missing = [] if wanted is None else sorted(wanted - found, key=lambda i: _parse_id(i, "id"))
    if missing and any(v is not None for k, v in given.items() if k != "ids"):
        # Ids excluded by another filter are not "missing": only ids absent from the DLQ are.
        missing = _absent(c.redis, dlq, missing)
    filters = {k: v for k, v in given.items() if v is not None}
    return ReplaySelection(stream, dlq, chosen, filters=filters, missing_ids=missing)


def _absent(r: Any, dlq: str, ids: list[str]) -> list[str]:
    gone: list[str] = []
    for chunk in _chunks(ids, PAGE):
        pipe = r.pipeline(transaction=False)
        for entry_id in chunk:
            pipe.xrange(dlq, entry_id, entry_id, count=1)
        gone += [i for i, hit in zip(chunk, pipe.execute(), strict=True) if not hit]
    return gone


def _range(
    since: datetime | timedelta | str | None,
    until: datetime | timedelta | str | None,
    ids: frozenset[str] | None,
) -> tuple[str | None, str]:
    """XRANGE bounds; ``None`` as start when the range is empty."""
    lo: tuple[int, int] = (0, 0)
    hi: tuple[int, int] = (2**64 - 1, 2**64 - 1)
    if since is not None:
        lo = (_bound_ms(since, "since"), 0)
    if until is not None:
        hi = (_bound_ms(until, "until"), 2**64 - 1)
    if ids:
        parsed = [_parse_id(i, "ids") for i in ids]
        lo, hi = max(lo, min(parsed)), min(hi, max(parsed))
    if lo > hi:
        return None, "+"
    return _id_text(lo), _id_text(hi)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# -- report ------------------------------------------------------------------------------------


@dataclass(eq=False)
class ReplayReport:
    """What a replay run did (or, with ``dry_run``, would do).

    ``selected`` lists the DLQ ids considered, oldest first; each ends in exactly one of
    ``replayed``, ``skipped`` (id -> reason: already replayed, gone from the DLQ, no target),
    ``failed`` (id -> error; the entry stays in the DLQ) or, after a cancel, ``remaining``.
    ``mapping`` gives DLQ id -> new stream id for every replayed id, and for ids this same run
    replayed before a rerun; a dry run cannot know new ids (the server assigns them on XADD)
    and maps each id it would replay to None. ``targets`` gives DLQ id -> target stream.
    """

    stream: str
    dlq: str
    replay_id: str
    dry_run: bool
    keep_in_dlq: bool = False
    selected: list[str] = field(default_factory=list)
    replayed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    remaining: list[str] = field(default_factory=list)
    mapping: dict[str, str | None] = field(default_factory=dict)
    targets: dict[str, str] = field(default_factory=dict)
    cancelled: bool = False
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    duration: timedelta = timedelta(0)

    @property
    def ok(self) -> bool:
        """True when nothing failed and nothing was left over by a cancel."""
        return not self.failed and not self.remaining

    def outcome(self, dlq_id: str) -> str:
        """``replayed``, ``skipped``, ``failed`` or ``remaining`` for a selected id."""
        if dlq_id in self.skipped:
            return "skipped"
        if dlq_id in self.failed:
            return "failed"
        if dlq_id in self.mapping:
            return "replayed"
        return "remaining"

    def __str__(self) -> str:
        mode = "DRY RUN, nothing written: " if self.dry_run else ""
        verb = "would replay" if self.dry_run else "replayed"
        text = (
            f"{mode}replay {self.replay_id} of {self.dlq!r}: {len(self.selected):,} selected, "
            f"{len(self.replayed):,} {verb}, {len(self.skipped):,} skipped, "
            f"{len(self.failed):,} failed"
        )
        if self.cancelled:
            text += f", cancelled with {len(self.remaining):,} remaining"
        return text + f" in {self.duration.total_seconds():.2f} s"

    def to_dataframe(self) -> pd.DataFrame:
        """One row per selected id: ``dlq_id``, ``outcome``, ``target``, ``new_id``, ``reason``."""
        import pandas as pd

        ids = self.selected
        reasons = self.skipped | self.failed
        return pd.DataFrame(
            {
                "dlq_id": pd.Series(ids, dtype="str"),
                "outcome": pd.Categorical(
                    [self.outcome(i) for i in ids],
                    categories=["replayed", "skipped", "failed", "remaining"],
                ),
                "target": pd.Series([self.targets.get(i) for i in ids], dtype="str"),
                "new_id": pd.Series([self.mapping.get(i) for i in ids], dtype="str"),
                "reason": pd.Series([reasons.get(i) for i in ids], dtype="str"),
            }
        )

    def _repr_html_(self) -> str:
        frame = self.to_dataframe()
        counts = frame["outcome"].value_counts(sort=False).to_frame().T.to_html(index=False)
        shown = frame.head(50).to_html(index=False)
        more = f"<p>… {len(frame) - 50:,} more rows</p>" if len(frame) > 50 else ""
        return f"<p><b>{html.escape(str(self))}</b></p>{counts}{shown}{more}"


# -- replaying ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Plan:
    entry: _Entry
    target: str
    replay_count: int
    group: bytes | None


class _Replayer:
    """Runs the planned script calls in pipelined batches and fills the report."""

    def __init__(self, c: RedisStreamsClient, report: ReplayReport, *, ledger_ttl: int) -> None:
        self.c = c
        self.report = report
        self.script = c.scripts.replay
        self.ledger = ledger_key(report.dlq, report.replay_id)
        self.ttl = ledger_ttl
        self.keys_tail = [replayed_key(report.dlq), self.ledger]
        self.loaded = False
        self.head = [
            b"1" if report.dry_run else b"0",
            b"1" if report.keep_in_dlq else b"0",
            report.replay_id.encode(),
        ]

    def stamp(self, plan: _Plan, now: bytes) -> list[bytes]:
        marker = [
            b"replay_id", self.head[2],
            b"replay_of", plan.entry.id.encode(),
            b"replay_count", str(plan.replay_count).encode(),
            b"replayed_at", now,
        ]  # fmt: skip
        if plan.group:
            marker += (b"replay_group", plan.group)
        return marker

    def run_batch(self, batch: Sequence[_Plan]) -> None:
        pipe = self.c.redis.pipeline(transaction=False)
        scripts = getattr(pipe, "scripts", None)
        if scripts is not None:
            scripts.add(self.script)  # loaded before execute if missing, as Script() does
        elif not self.loaded:
            self.c.redis.script_load(self.script.script)  # cluster pipeline: load it once
            self.loaded = True
        sha, dlq, tail, head = self.script.sha, self.report.dlq, self.keys_tail, self.head
        now = format_time(datetime.now(UTC)).encode()
        for plan in batch:
            pipe.execute_command(
                "EVALSHA", sha, 4, dlq, plan.target, *tail, plan.entry.id, *head,
                plan.group or b"", *plan.entry.original(), *self.stamp(plan, now),
            )  # fmt: skip
        if self.ttl and not self.report.dry_run:
            pipe.expire(self.ledger, self.ttl)
        replies = pipe.execute(raise_on_error=False)
        for plan, reply in zip(batch, replies, strict=False):
            self.record(plan, reply)

    def record(self, plan: _Plan, reply: Any) -> None:
        report, dlq_id = self.report, plan.entry.id
        if isinstance(reply, Exception):
            if isinstance(reply, redis.ConnectionError):
                raise reply
            report.failed[dlq_id] = f"{type(reply).__name__}: {reply}"
            return
        status, detail = reply[0].decode(), reply[1].decode("utf-8", "replace")
        if status in ("ok", "dry"):
            report.replayed.append(dlq_id)
            report.mapping[dlq_id] = detail if status == "ok" else None
        elif status == "marked":
            run, new_id, target = [*detail.split("\n", 2), "", ""][:3]
            report.skipped[dlq_id] = (
                f"already replayed (kept in the DLQ) by run {run} into {target!r} as {new_id}"
            )
        elif status == "done":
            new_id, _, target = [*detail.split("\n", 2), "", ""][:3]
            report.skipped[dlq_id] = f"already replayed by this run into {target!r} as {new_id}"
            report.mapping[dlq_id] = new_id
        elif status == "gone":
            report.skipped[dlq_id] = (
                "no longer in the DLQ (replayed by another run, or deleted or trimmed)"
            )
        else:
            report.failed[dlq_id] = f"target {plan.target!r} is a {detail}, not a stream"


def _plan(
    selection: ReplaySelection,
    report: ReplayReport,
    target: str | None,
    for_group: str | _FailedGroup | None,
) -> list[_Plan]:
    """Targets, replay counts and groups; skipped / failed entries go straight to the report."""
    plans: list[_Plan] = []
    fixed_group = None if isinstance(for_group, _FailedGroup) or for_group is None else for_group
    for entry in selection._entries:
        report.selected.append(entry.id)
        dest = target or entry.text(b"dlq_source_stream")
        if not dest:
            report.skipped[entry.id] = (
                "no dlq_source_stream field and no target given: pass target= to replay it"
            )
            continue
        report.targets[entry.id] = dest
        prior = entry.raw.get(b"replay_count", b"0") or b"0"
        try:
            count = int(prior) + 1
        except ValueError:
            report.failed[entry.id] = (
                f"DLQ entry {entry.id}: field 'replay_count' is not an integer: {prior!r}"
            )
            continue
        if isinstance(for_group, _FailedGroup):
            group = entry.raw.get(b"dlq_group") or None
        else:
            group = fixed_group.encode() if fixed_group else None
        plans.append(_Plan(entry, dest, count, group))
    return plans


def _check_slots(c: RedisStreamsClient, dlq: str, replay_id: str, targets: Iterable[str]) -> None:
    if not is_cluster(c.redis):
        return
    for dest in set(targets):
        check_same_slot(dlq, dest, replayed_key(dlq), ledger_key(dlq, replay_id))


def _pace(cancel: _Cancel | None, delay: float) -> None:
    if delay <= 0:
        return
    if cancel is not None:
        cancel.wait(delay)
    else:
        time.sleep(delay)


def _batches(
    plans: list[_Plan], size: int, rate: float | None, cancel: _Cancel | None
) -> Iterator[list[_Plan]]:
    """Batches of ``plans``, paced to ``rate`` events/s, stopping when ``cancel`` is set."""
    if rate is not None:
        # Batches of ~0.1 s worth of events keep a slow replay smooth and promptly cancellable.
        size = min(size, max(1, int(rate / 10)))
    start = time.monotonic()
    sent = 0
    for i in range(0, len(plans), size):
        if rate is not None:
            _pace(cancel, start + sent / rate - time.monotonic())
        if cancel is not None and cancel.is_set():
            return
        batch = plans[i : i + size]
        yield batch
        sent += len(batch)


def replay_dlq(
    client: RedisStreamsClient | redis.Redis,
    stream: str,
    selection: ReplaySelection | None = None,
    *,
    target: str | None = None,
    dry_run: bool = False,
    rate: float | None = None,
    batch_size: int = 500,
    keep_in_dlq: bool = False,
    progress: bool | None = None,
    for_group: str | _FailedGroup | None = FAILED_GROUP,
    cancel: _Cancel | None = None,
    replay_id: str | None = None,
    ledger_ttl: timedelta | float | None = DEFAULT_LEDGER_TTL,
    **filters: Any,
) -> ReplayReport:
    """Re-inject DLQ entries of ``stream`` (the source stream's name) and report what happened.

    Replays ``selection`` (from `select_dlq`), or the entries the ``filters`` (the keyword
    arguments of `select_dlq`) select; with neither, the whole DLQ.

    - ``target``: the stream to add the events to; by default each entry's source stream
      (``dlq_source_stream``). Entries with neither are skipped with the reason.
    - ``dry_run``: run every check (in the same script, against the live data) and write
      nothing; the report equals a real run's except that ``mapping`` values are None.
    - ``rate``: at most that many events per second (ignored by a dry run);
      ``batch_size``: script calls per pipeline round trip.
    - ``keep_in_dlq``: leave the entries in the DLQ, marked in ``<dlq>:replayed``.
    - ``progress``: True shows a tqdm bar (needs ``streamlab[notebook]``), None shows one in
      a notebook when tqdm is installed, False never.
    - ``for_group``: the ``replay_group`` stamped on the events: by default the group each
      event failed in (other groups ack and skip it); a group name; None for every group.
    - ``cancel``: a `threading.Event`; when set, the replay stops before the next batch and
      the report lists the rest in ``remaining``. Rerunning continues (idempotent).
    - ``replay_id``: reuse a run id (e.g. an interrupted run's) so the rerun's events join its
      ledger; default a new uuid4.
    - ``ledger_ttl``: how long `replay_outcome` can follow this run (None: forever).

    Raises `ConfigError` before writing anything when a target cannot share the DLQ's cluster
    slot. A connection lost mid-run raises; every event is then either replayed or still in
    the DLQ, and running the replay again finishes the job.
    """
    c = _as_client(client)
    dlq = c.dlq_stream(stream)
    selection = _selection(c, stream, dlq, selection, filters)
    if batch_size < 1:
        raise ConfigError(f"batch_size: must be >= 1, got {batch_size}")
    if rate is not None and rate <= 0:
        raise ConfigError(f"rate: must be > 0 events per second, got {rate}")
    ttl = 0 if ledger_ttl is None else int(seconds(ledger_ttl) or 0)
    report = ReplayReport(
        stream, dlq, replay_id or str(uuid.uuid4()), dry_run, keep_in_dlq=keep_in_dlq
    )
    clock = time.perf_counter()
    plans = _plan(selection, report, target, for_group)
    _check_slots(c, dlq, report.replay_id, (p.target for p in plans))
    replayer = _Replayer(c, report, ledger_ttl=max(ttl, 0))
    bar = progress_bar(progress, len(plans), "dry run" if dry_run else "replay", unit="event")
    done = 0
    try:
        for batch in _batches(plans, batch_size, None if dry_run else rate, cancel):
            replayer.run_batch(batch)
            done += len(batch)
            bar.update(len(batch))
    except redis.ConnectionError as exc:
        exc.add_note(
            f"replay {report.replay_id} interrupted after {done:,} of {len(plans):,} events; "
            "each is either replayed or still in the DLQ: run the replay again to finish"
        )
        raise
    finally:
        bar.close()
    report.remaining = [p.entry.id for p in plans[done:]]
    report.cancelled = bool(report.remaining)
    report.duration = timedelta(seconds=time.perf_counter() - clock)
    return report


def _selection(
    c: RedisStreamsClient,
    stream: str,
    dlq: str,
    selection: ReplaySelection | None,
    filters: Mapping[str, Any],
) -> ReplaySelection:
    unknown = set(filters) - _FILTERS
    if unknown:
        raise TypeError(
            f"replay_dlq() got unknown argument(s) {sorted(unknown)}; "
            f"filters are {sorted(_FILTERS)}"
        )
    if selection is None:
        return select_dlq(c, stream, **filters)
    if filters:
        raise ConfigError("pass either a selection or filters to replay_dlq, not both")
    if selection.dlq != dlq:
        raise ConfigError(
            f"the selection is of DLQ {selection.dlq!r} but stream {stream!r} has DLQ {dlq!r}"
        )
    return selection


# -- trying a handler --------------------------------------------------------------------------


def try_handler(
    handler: Callable[[StreamMessage], Any], selection: ReplaySelection
) -> pd.DataFrame:
    """Run ``handler`` in-process on each selected event, as a replay would deliver it.

    Nothing is written to Redis. The handler gets a `StreamMessage` of the fields a replay
    would write (``dlq_*`` dropped, ``retry_count`` 0, no replay marker), with ``stream`` the
    source stream and ``id`` the DLQ entry id (the replayed entry has no id yet). An entry that
    does not decode is not passed to the handler (the consumer would dead-letter it at once):
    its row says ``error`` with ``error_type`` ``DecodeError``.

    Returns one row per entry: ``dlq_id``, ``event_type``, ``outcome`` (``ok`` / ``error``),
    ``error``, ``error_type`` and ``duration`` (a timedelta).
    """
    import pandas as pd

    rows: dict[str, list[Any]] = {
        k: [] for k in ("dlq_id", "event_type", "outcome", "error", "error_type", "duration")
    }
    for entry in selection._entries:
        flat = entry.original()
        source = entry.text(b"dlq_source_stream") or selection.stream
        msg = decode_message(source, entry.id, dict(zip(flat[::2], flat[1::2], strict=True)))
        error: BaseException | None = msg.decode_error
        began = time.perf_counter()
        if error is None:
            try:
                handler(msg)
            except Exception as exc:
                error = exc
        took = time.perf_counter() - began
        rows["dlq_id"].append(entry.id)
        rows["event_type"].append(entry.event_type)
        rows["outcome"].append("ok" if error is None else "error")
        rows["error"].append(None if error is None else str(error))
        rows["error_type"].append(None if error is None else type(error).__name__)
        rows["duration"].append(timedelta(seconds=took))
    frame = pd.DataFrame(rows)
    frame["dlq_id"] = frame["dlq_id"].astype("str")
    frame["outcome"] = pd.Categorical(frame["outcome"], categories=["ok", "error"])
    frame["duration"] = pd.to_timedelta(frame["duration"])
    return frame


# -- outcome -----------------------------------------------------------------------------------

_OUTCOME_COLUMNS = (
    "dlq_id",
    "target",
    "new_id",
    "group",
    "state",
    "consumer",
    "deliveries",
    "idle",
    "dlq_entry_id",
    "error_type",
    "error",
)
_STATES = ("acked", "pending", "dead_lettered", "waiting", "gone", "no_group")


def replay_outcome(
    client: RedisStreamsClient | redis.Redis,
    stream: str,
    replay_id: str,
    *,
    targets: Sequence[str] | None = None,
) -> pd.DataFrame:
    """What became of the events replay run ``replay_id`` injected from the DLQ of ``stream``.

    One row per event and consuming group (the event's ``replay_group``, or every group of the
    target when it has none), with ``state``:

    - ``acked``: delivered to the group (id <= its last-delivered id), not pending, not in DLQ;
    - ``pending``: delivered and not acked yet (``consumer``, ``deliveries``, ``idle``; a
      retry waiting for its backoff shows consumer ``streamlab:retry``);
    - ``dead_lettered``: back in the target's DLQ (``dlq_entry_id``, ``error_type``, ``error``);
    - ``waiting``: not delivered to the group yet;
    - ``gone``: not delivered and no longer in the target (deleted or trimmed);
    - ``no_group``: the target has no such group (nobody consumes it).

    The events come from the run's ledger (``<dlq>:replay:<replay_id>``). Once it has expired
    (``ledger_ttl``), the target streams are scanned for entries stamped with ``replay_id``:
    ``stream`` itself, or the ``targets`` given.
    """
    c = _as_client(client)
    dlq = c.dlq_stream(stream)
    injected = _ledger(c.redis, ledger_key(dlq, replay_id))
    if not injected:
        injected = _scan_for_run(c.redis, targets or [stream], replay_id)
    by_target: dict[str, list[_Injected]] = {}
    for dlq_id, (new_id, dest, group) in injected.items():
        by_target.setdefault(dest, []).append((dlq_id, new_id, group))
    rows: list[dict[str, Any]] = []
    for dest, items in by_target.items():
        rows += _target_outcome(c, dest, sorted(items, key=lambda i: _parse_id(i[1], "id")))
    return _outcome_frame(rows)


# (DLQ id, new id, replay group or None)
_Injected = tuple[str, str, bytes | None]


def _ledger(r: Any, key: str) -> dict[str, tuple[str, str, bytes | None]]:
    """DLQ id -> (new id, target, replay group or None) of one run."""
    found: dict[str, tuple[str, str, bytes | None]] = {}
    for name, value in r.hscan_iter(key, count=PAGE):
        new_id, group, dest = value.split(b"\n", 2)
        found[name.decode()] = (new_id.decode(), dest.decode(), group or None)
    return found


def _scan_for_run(
    r: Any, targets: Sequence[str], replay_id: str
) -> dict[str, tuple[str, str, bytes | None]]:
    mark = replay_id.encode()
    found: dict[str, tuple[str, str, bytes | None]] = {}
    for dest in targets:
        for raw_id, raw in _page(r, dest, "-", "+"):
            if raw.get(b"replay_id") == mark and b"replay_of" in raw:
                group = raw.get(b"replay_group") or None
                found[raw[b"replay_of"].decode()] = (raw_id.decode(), dest, group)
    return found


def _gone(r: Any, target: str, new_ids: list[str]) -> set[str]:
    """The replayed entries no longer in ``target`` (deleted or trimmed)."""
    gone: set[str] = set()
    for chunk in _chunks(new_ids, PAGE):
        pipe = r.pipeline(transaction=False)
        for new_id in chunk:
            pipe.xrange(target, new_id, new_id, count=1)
        gone.update(i for i, hit in zip(chunk, pipe.execute(), strict=True) if not hit)
    return gone


def _last_delivered(r: Any, target: str) -> dict[str, tuple[int, int]]:
    try:
        groups = r.xinfo_groups(target)
    except redis.ResponseError as exc:
        if "no such key" in str(exc):
            return {}
        raise
    out: dict[str, tuple[int, int]] = {}
    for g in groups:
        name = g.get("name", g.get(b"name"))
        last = g.get("last-delivered-id", g.get(b"last-delivered-id")) or b"0-0"
        out[name.decode() if isinstance(name, bytes) else name] = _parse_id(last, "group")
    return out


def _pending(r: Any, target: str, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    """XPENDING rows for (new id, group) pairs, pipelined."""
    found: dict[tuple[str, str], Any] = {}
    for chunk in _chunks(pairs, PAGE):
        pipe = r.pipeline(transaction=False)
        for new_id, group in chunk:
            pipe.xpending_range(target, group, new_id, new_id, 1)
        for pair, hit in zip(chunk, pipe.execute(), strict=True):
            if hit:
                found[pair] = hit[0]
    return found


def _dead_letters(
    c: RedisStreamsClient, target: str, new_ids: list[str]
) -> dict[str, list[_Entry]]:
    """DLQ entries of ``target`` made from the replayed entries (added after the first)."""
    wanted = set(new_ids)
    found: dict[str, list[_Entry]] = {}
    start = new_ids[0].split("-", 1)[0]
    for raw_id, raw in _page(c.redis, c.dlq_stream(target), start, "+"):
        source_id = raw.get(b"dlq_source_id", b"").decode()
        if source_id in wanted and raw.get(b"dlq_source_stream", b"").decode() == target:
            found.setdefault(source_id, []).append(_Entry(raw_id.decode(), raw))
    return found


def _target_outcome(
    c: RedisStreamsClient, target: str, items: list[_Injected]
) -> list[dict[str, Any]]:
    new_ids = [new_id for _, new_id, _ in items]
    delivered = _last_delivered(c.redis, target)
    wanted: list[tuple[str, str, str | None]] = []
    for dlq_id, new_id, group in items:
        if group is not None:
            wanted.append((dlq_id, new_id, group.decode()))
        else:
            wanted += [(dlq_id, new_id, g) for g in delivered] or [(dlq_id, new_id, None)]
    pending = _pending(c.redis, target, [(i, g) for _, i, g in wanted if g in delivered])
    dead = _dead_letters(c, target, new_ids)
    gone = _gone(c.redis, target, new_ids)
    rows = []
    for dlq_id, new_id, name in wanted:
        row: dict[str, Any] = {"dlq_id": dlq_id, "target": target, "new_id": new_id}
        row["group"] = name
        state = _state(
            new_id, name, delivered=delivered, pending=pending, dead=dead, gone=new_id in gone
        )
        rows.append(row | state)
    return rows


def _state(
    new_id: str,
    group: str | None,
    *,
    delivered: Mapping[str, tuple[int, int]],
    pending: Mapping[tuple[str, str], Any],
    dead: Mapping[str, list[_Entry]],
    gone: bool,
) -> dict[str, Any]:
    if group is None or group not in delivered:
        return {"state": "no_group"}
    failed = [e for e in dead.get(new_id, []) if e.text(b"dlq_group") in ("", group)]
    if failed:
        last = failed[-1]
        return {
            "state": "dead_lettered",
            "dlq_entry_id": last.id,
            "error_type": last.text(b"dlq_error_type"),
            "error": last.text(b"dlq_error"),
        }
    row = pending.get((new_id, group))
    if row is not None:
        return {
            "state": "pending",
            "consumer": row["consumer"].decode(),
            "deliveries": int(row["times_delivered"]),
            "idle": timedelta(milliseconds=int(row["time_since_delivered"])),
        }
    if _parse_id(new_id, "id") <= delivered[group]:
        return {"state": "acked"}
    return {"state": "gone" if gone else "waiting"}


def _outcome_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    import pandas as pd

    data = {name: [row.get(name) for row in rows] for name in _OUTCOME_COLUMNS}
    frame = pd.DataFrame(data, columns=list(_OUTCOME_COLUMNS))
    for name in ("dlq_id", "target", "new_id", "group", "consumer", "dlq_entry_id"):
        frame[name] = frame[name].astype("str")
    for name in ("error_type", "error"):
        frame[name] = frame[name].astype("str")
    frame["state"] = pd.Categorical(frame["state"], categories=list(_STATES))
    frame["deliveries"] = frame["deliveries"].astype("Int64")
    frame["idle"] = pd.to_timedelta(frame["idle"])
    return frame
