"""Choosing DLQ entries for replay: `select_dlq` and the `ReplaySelection` it returns."""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from streamlab import _args
from streamlab.client import ClientLike, as_client, dlq_name
from streamlab.errors import ArgumentError
from streamlab.events import StreamMessage
from streamlab.filters import DLQFilter, check_filter
from streamlab.ids import Bound, entry_time, id_range, id_text, parse_id
from streamlab.replay._entries import _COUNT_FIELD, PAGE, _chunks, _Entry, _page

if TYPE_CHECKING:
    import pandas as pd

    from streamlab.events import StreamEvent

__all__ = ["ReplaySelection", "check_selection", "select_dlq"]


class ReplaySelection:
    """DLQ entries chosen for replay; made by `select_dlq`.

    ``len(sel)`` counts them, ``sel.ids`` lists their DLQ ids (oldest first), iterating gives
    the decoded DLQ messages (`StreamMessage` with ``failure``; ``event`` None when the entry
    does not decode), `summary` counts them by error type, event type, source and group,
    `to_dataframe` gives one row each, and a notebook shows a summary and the first rows.
    ``missing_ids`` lists ids asked for with ``ids=`` that are not in the DLQ; ``filter``,
    ``since``, ``until`` and ``limit`` are what it was selected by (`describe` says it).
    """

    def __init__(
        self,
        stream: str,
        dlq: str,
        entries: list[_Entry],
        *,
        filter: DLQFilter | None = None,
        since: Bound | None = None,
        until: Bound | None = None,
        limit: int | None = None,
        missing_ids: Sequence[str] = (),
    ) -> None:
        self.stream = stream
        self.dlq = dlq
        self._entries = entries
        self.filter = filter or DLQFilter()
        self.since, self.until, self.limit = since, until, limit
        self.missing_ids = list(missing_ids)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[StreamMessage]:
        return (entry.message() for entry in self._entries)

    def describe(self) -> str:
        """What it was selected by, on one line: ``event_type=..., since=..., limit=10``."""
        text = self.filter.describe() if self.filter else ""
        bounds = {"since": self.since, "until": self.until, "limit": self.limit}
        extra = ", ".join(f"{k}={_shown(v)}" for k, v in bounds.items() if v is not None)
        return ", ".join(part for part in (text, extra) if part) or "everything"

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
        lines = [self._headline(), f"  selected by: {self.describe()}"]
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

        from streamlab.frames._display import Table
        from streamlab.frames.columns import typed

        es = self._entries
        ids = [e.id for e in es]
        frame = pd.DataFrame(
            {
                "id": ids,
                "ts": [parse_id(i)[0] for i in ids],
                "event_id": [e.field(b"id") for e in es],
                "event_type": [e.event_type for e in es],
                "tenant_id": [e.tenant for e in es],
                "repository": [e.repository for e in es],
                "error_type": [e.text(b"dlq_error_type") for e in es],
                "error": [e.text(b"dlq_error") for e in es],
                "attempts": _ints(pd, [e.text(b"dlq_attempts") for e in es]),
                "source_stream": [e.text(b"dlq_source_stream") for e in es],
                "source_id": [e.text(b"dlq_source_id") for e in es],
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
        frame["ts"] = pd.to_datetime(frame["ts"].astype("int64"), unit="ms", utc=True)
        return Table(typed(frame))

    def _repr_html_(self) -> str:
        from streamlab.frames._display import Table

        head = Table(self.to_dataframe().head(20))
        counts = "".join(
            f"<li><b>{html.escape(name)}</b>: "
            + html.escape(", ".join(f"{k} {n:,}" for k, n in list(c.items())[:8]))
            + "</li>"
            for name, c in self.summary().items()
        )
        more = f"<p>… {len(self) - 20:,} more rows</p>" if len(self) > 20 else ""
        return (
            f"<p><b>{html.escape(self._headline())}</b><br>"
            f"selected by: <code>{html.escape(self.describe())}</code></p><ul>{counts}</ul>"
            f"{head._repr_html_() or ''}{more}"
        )


def _shown(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


def _when(entry_id: str) -> str:
    return entry_time(entry_id).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ints(pd: Any, values: list[str]) -> Any:
    return pd.to_numeric(pd.Series(values, dtype="object"), errors="coerce").astype("Int64")


def select_dlq(
    client: ClientLike,
    stream: str,
    filters: DLQFilter | None = None,
    *,
    dlq: str | None = None,
    since: Bound | None = None,
    until: Bound | None = None,
    limit: int | None = None,
    event_type: str | Iterable[str] | None = None,
    tenant_id: str | Iterable[str] | None = None,
    repository: str | Iterable[str] | None = None,
    error_type: str | Iterable[str] | None = None,
    error_signature: str | Iterable[str] | None = None,
    error_contains: str | None = None,
    ids: Iterable[str] | Any | None = None,
    where: Callable[[StreamEvent], bool] | None = None,
) -> ReplaySelection:
    """Choose entries of the DLQ of ``stream`` (the source stream's name) for replay.

    The filter keywords are the DLQ frame's column names (`streamlab.filters`): every one
    given must match, a list matches any of its values. ``event_type``, ``tenant_id`` and
    ``repository`` are read from the raw fields with `decode_event`'s aliases, so entries that
    do not decode (DLQ'd as ``DecodeError``) are still selectable by them; ``error_type`` is
    exact (``"DecodeError"`` selects undecodable entries); ``error_signature`` is the frame's;
    ``error_contains`` a case-insensitive substring of the error; ``ids`` DLQ entry ids (a
    list, or a filtered frame's ``id`` column; ids not in the DLQ are listed in
    ``missing_ids``); ``where`` a predicate on the decoded `StreamEvent`, never called for
    entries that do not decode. ``filters`` is a `DLQFilter` to start from.

    ``since`` / ``until`` bound when the entry was dead-lettered (its DLQ id; `streamlab.ids`),
    ``limit`` caps the count, oldest first. ``dlq`` names the DLQ when it is not the client's
    DLQ of ``stream``. The DLQ is read in pages of 1000 (XRANGE).
    """
    c = as_client(client)
    name = dlq_name(c, stream, dlq)
    check_filter(filters)
    limit = _args.optional_count("limit", limit)
    flt = DLQFilter.of(
        filters,
        event_type=event_type,
        tenant_id=tenant_id,
        repository=repository,
        error_type=error_type,
        error_signature=error_signature,
        error_contains=error_contains,
        ids=ids,
        where=where,
    )
    bounds = _range(since, until, flt.ids)
    chosen: list[_Entry] = []
    if limit != 0 and bounds is not None:
        for raw_id, raw in _page(c.redis, name, *bounds):
            entry = _Entry(raw_id.decode(), raw, name)
            if flt.matches(entry):
                chosen.append(entry)
                if limit is not None and len(chosen) >= limit:
                    break
    found = {e.id for e in chosen}
    wanted = flt.ids
    missing = [] if wanted is None else sorted(wanted - found, key=parse_id)
    others = len(flt.keywords()) > 1 or (since, until, limit) != (None, None, None)
    if missing and others:
        # Ids excluded by another filter are not "missing": only ids absent from the DLQ are.
        missing = _absent(c.redis, name, missing)
    return ReplaySelection(
        stream, name, chosen, filter=flt, since=since, until=until, limit=limit,
        missing_ids=missing,
    )  # fmt: skip


def check_selection(selection: object) -> ReplaySelection:
    """A ``selection`` argument: a `ReplaySelection` (`ArgumentError` naming it otherwise)."""
    if not isinstance(selection, ReplaySelection):
        raise ArgumentError(
            f"selection: expected a ReplaySelection (select_dlq), got {type(selection).__name__}"
        )
    return selection


def _absent(r: Any, dlq: str, ids: list[str]) -> list[str]:
    gone: list[str] = []
    for chunk in _chunks(ids, PAGE):
        pipe = r.pipeline(transaction=False)
        for entry_id in chunk:
            pipe.xrange(dlq, entry_id, entry_id, count=1)
        gone += [i for i, hit in zip(chunk, pipe.execute(), strict=True) if not hit]
    return gone


def _range(
    since: Bound | None, until: Bound | None, ids: frozenset[str] | None
) -> tuple[str, str] | None:
    """XRANGE bounds, narrowed to the ids asked for; None when the range is empty."""
    bounds = id_range(since, until)
    if bounds is None or ids is None:
        return bounds
    if not ids:
        return None
    lo = max(parse_id(bounds[0]), min(parse_id(i) for i in ids))
    hi = min(parse_id(bounds[1]), max(parse_id(i) for i in ids))
    return (id_text(lo), id_text(hi)) if lo <= hi else None
