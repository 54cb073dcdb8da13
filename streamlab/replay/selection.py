"""Choosing DLQ entries for replay: `select_dlq` and the `ReplaySelection` it returns."""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import redis

from streamlab.client import RedisStreamsClient
from streamlab.errors import ConfigError
from streamlab.events import StreamMessage
from streamlab.replay._entries import (
    _COUNT_FIELD,
    _ID,
    PAGE,
    _as_client,
    _chunks,
    _Entry,
    _id_text,
    _page,
    _parse_id,
)

if TYPE_CHECKING:
    import pandas as pd

    from streamlab.events import StreamEvent

__all__ = ["ReplaySelection", "select_dlq"]

_FILTERS = frozenset(
    {"event_types", "tenants", "repositories", "error_types", "error_contains"}
    | {"since", "until", "ids", "where", "limit"}
)


def _strings(value: str | Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str | bytes):
        value = [value.decode() if isinstance(value, bytes) else value]
    return frozenset(str(v) for v in value)


def _bound(value: datetime | timedelta | str, name: str, *, upper: bool) -> tuple[int, int]:
    """The XRANGE bound of ``since`` (``upper`` False) or ``until``, both inclusive."""
    if isinstance(value, str) and _ID.match(value.strip()):
        # Several entries can share a millisecond: a full id must split it where it says.
        return _parse_id(value, name)
    ms = _bound_ms(value, name)
    return (ms, 2**64 - 1) if upper else (ms, 0)


def _bound_ms(value: datetime | timedelta | str, name: str) -> int:
    if isinstance(value, timedelta):
        value = datetime.now(UTC) - value
    if isinstance(value, str):
        if re.fullmatch(r"[0-9]+", value.strip()):
            return int(value)
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
                "replay_count": _ints(pd, [e.text(_COUNT_FIELD) or "0" for e in es]),
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
      datetime (naive means UTC), a timedelta (that long ago), a time in milliseconds (a
      string of digits: the whole millisecond), or a full stream id like ``"1700000000000-3"``
      (bounding at that very entry: several entries can share a millisecond);
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
        lo = _bound(since, "since", upper=False)
    if until is not None:
        hi = _bound(until, "until", upper=True)
    if ids:
        parsed = [_parse_id(i, "ids") for i in ids]
        lo, hi = max(lo, min(parsed)), min(hi, max(parsed))
    if lo > hi:
        return None, "+"
    return _id_text(lo), _id_text(hi)
