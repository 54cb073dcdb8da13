"""Pending-entry lists, consumer groups and consumers as DataFrames."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import pandas as pd
import redis

from streamlab import _args
from streamlab._progress import progress_bar
from streamlab.client import ClientLike, translate_errors
from streamlab.frames._build import STREAM_ALIASES, STREAM_COLUMNS, FrameBuilder
from streamlab.frames._fetch import PAGE_SIZE, Fetcher, fetcher
from streamlab.frames.stream import payload_paths
from streamlab.ids import Bound, id_range, paged
from streamlab.keys import retry_due_key
from streamlab.policy import RETRY_CONSUMER  # where a retry waits out its backoff
from streamlab.records import ConsumerInfo, PendingEntry, consumer_infos, group_infos

__all__ = [
    "PENDING_STATES",
    "RETRY_CONSUMER",
    "consumers_to_dataframe",
    "groups_to_dataframe",
    "pending_to_dataframe",
]

PENDING_STATES = ("in_flight", "retry_wait", "dead_consumer", "poison", "trimmed")
# GroupInfo's attributes, in the frame's order (``name`` becomes ``group``).
_GROUP_COLUMNS = (
    "name", "consumers", "pending", "last_delivered_id", "last_delivered", "entries_read", "lag",
)  # fmt: skip
_CONSUMER_COLUMNS = ("group", "consumer", "pending", "idle", "inactive")


def _td(ms: int | None) -> Any:
    return pd.NaT if ms is None else pd.Timedelta(milliseconds=ms)


def groups_to_dataframe(client: ClientLike, stream: str) -> pd.DataFrame:
    """One row per consumer group of ``stream`` (XINFO GROUPS).

    Columns: ``group`` (category), ``consumers``, ``pending`` (``Int64``), ``last_delivered_id``
    (str), ``last_delivered`` (``datetime64[ms, UTC]``, from that id), ``entries_read`` and
    ``lag`` (``Int64``; Redis reports no lag when it cannot compute it, e.g. after deletions).
    A missing stream gives an empty frame; a key that is not a stream raises WrongTypeError.
    """
    _args.name("stream", stream)
    source = fetcher(client)
    try:
        with translate_errors(stream):
            groups = group_infos(source.redis.xinfo_groups(stream))
    except redis.ResponseError as exc:
        if "no such key" not in str(exc):
            raise
        groups = []
    df = pd.DataFrame(
        [[getattr(g, c) for c in _GROUP_COLUMNS] for g in groups], columns=_GROUP_COLUMNS
    )
    df = df.rename(columns={"name": "group"})
    df["last_delivered"] = df["last_delivered"].astype("datetime64[ms, UTC]")
    return df.astype({
        "group": "category", "consumers": "Int64", "pending": "Int64",
        "last_delivered_id": "str", "entries_read": "Int64", "lag": "Int64",
    })  # fmt: skip


def _consumers(source: Fetcher, stream: str, group: str) -> list[ConsumerInfo]:
    with translate_errors(stream, group):
        return consumer_infos(source.redis.xinfo_consumers(stream, group))


def consumers_to_dataframe(client: ClientLike, stream: str, group: str) -> pd.DataFrame:
    """One row per consumer of ``group`` (XINFO CONSUMERS).

    Columns: ``group``, ``consumer`` (category), ``pending`` (``Int64``), ``idle`` (time since
    its last attempted read or claim) and ``inactive`` (since its last successful one; NaT
    on Redis < 7.2 and for a consumer that never read), both ``timedelta64[ms]``.
    A missing group (or stream) raises `streamlab.errors.GroupNotFoundError`.
    """
    _args.name("stream", stream)
    _args.name("group", group)
    rows = _consumers(fetcher(client), stream, group)
    df = pd.DataFrame({
        "group": pd.Series([group] * len(rows), dtype="category"),
        "consumer": pd.Series([c.name for c in rows], dtype="category"),
        "pending": pd.Series([c.pending for c in rows], dtype="Int64"),
        "idle": pd.Series([_td(c.idle_ms) for c in rows], dtype="timedelta64[ms]"),
        "inactive": pd.Series([_td(c.inactive_ms) for c in rows], dtype="timedelta64[ms]"),
    })  # fmt: skip
    return df


def _millis(name: str, value: object) -> int:
    """A duration argument (`streamlab._args.duration`: timedelta, seconds, ``"30s"``...) in
    whole milliseconds, as XPENDING's IDLE takes it."""
    return _args.duration(name, value) // timedelta(milliseconds=1)


def pending_to_dataframe(
    client: ClientLike,
    stream: str,
    group: str,
    *,
    consumer: str | None = None,
    min_idle: float | str | timedelta | None = None,
    since: Bound | None = None,
    until: Bound | None = None,
    limit: int | None = None,
    with_entries: bool = True,
    poison_threshold: int = 3,
    claim_min_idle: float | str | timedelta = timedelta(seconds=60),
    payload_fields: Iterable[str] | None = None,
    progress: bool | None = None,
    page_size: int = PAGE_SIZE,
) -> pd.DataFrame:
    """One row per pending entry of ``group``, classified, with the entry's own fields.

    Reads extended XPENDING in pages (``consumer`` and ``min_idle`` filter on the server;
    durations are timedeltas, seconds or text like ``"30s"``, `streamlab.durations`), XINFO
    CONSUMERS once, and, with ``with_entries``, the entries' fields in one ranged XRANGE per
    page (plus one pipelined round trip for ids outside that range), never one round trip
    per id.

    Columns: ``id``, ``ts``, ``consumer`` (category), ``state`` (category), ``deliveries``
    (``Int64``), ``idle`` (``timedelta64[ms]``, since last delivery), ``consumer_idle`` (the
    owner's XINFO idle), ``claimable`` (idle >= ``claim_min_idle``, and for a waiting retry
    its due time reached: the next claim takes it), ``retry_due_at`` (``datetime64[ms, UTC]``:
    when a ``retry_wait`` entry is due, from the group's due-time set; for a waiting retry
    without a due time, when its idle reaches ``claim_min_idle``; NaT on every other row),
    ``deleted`` (boolean; the entry is gone from the stream, ``<NA>`` without
    ``with_entries``), then the entry's columns as `stream_to_dataframe` gives them.

    ``state``, the first that applies:

    - ``trimmed``: the entry was deleted or trimmed from the stream while pending; no
      worker can process it, only XACK (or XAUTOCLAIM, which drops it) clears it.
    - ``poison``: delivered more than ``poison_threshold`` times (pass the consumer's
      ``max_retries``): it keeps failing, or keeps killing the workers that take it.
    - ``retry_wait``: owned by ``streamlab:retry``, the consumer name under which a failed
      message waits for its backoff; that name never reads, so its idle time says nothing
      about a dead worker. ``retry_due_at`` tells when its backoff elapses.
    - ``dead_consumer``: its consumer has been idle for ``claim_min_idle`` or longer (default
      60 s, the consumer's default; the same bound as ``claimable`` and XPENDING's IDLE): the
      worker is gone and a reclaim will take the entry.
    - ``in_flight``: held by a live consumer.

    The pending list is in id order: ``since`` / ``until`` bound the entries by id, so by
    when they were added (`streamlab.ids`, as for `stream_to_dataframe`), and ``limit`` caps
    the rows, oldest first; all three are passed to XPENDING, which reads no further.

    A missing group or stream raises `streamlab.errors.GroupNotFoundError`.
    """
    _args.name("stream", stream)
    _args.name("group", group)
    if consumer is not None:
        _args.name("consumer", consumer)
    idle_ms = None if min_idle is None else _millis("min_idle", min_idle)
    claim_ms = _millis("claim_min_idle", claim_min_idle)
    poison_threshold = _args.count("poison_threshold", poison_threshold)
    limit = _args.optional_count("limit", limit)
    page_size = _args.count("page_size", page_size, minimum=1)
    bounds = id_range(since, until)
    paths = payload_paths(payload_fields)
    source = fetcher(client)
    owners = {c.name: c.idle_ms for c in _consumers(source, stream, group)}
    builder = FrameBuilder(renames=STREAM_ALIASES, columns=STREAM_COLUMNS, paths=paths)
    meta: dict[str, list[Any]] = {
        "consumer": [], "idle": [], "deliveries": [], "deleted": [], "due": [],
    }  # fmt: skip
    bar = progress_bar(progress, None, f"{stream} pending")
    try:
        for page in _pending_pages(
            source,
            stream,
            group,
            bounds=bounds,
            limit=limit,
            consumer=consumer,
            min_idle=idle_ms,
            page_size=page_size,
        ):
            ids = [row.id.encode() for row in page]
            found = source.entries_by_id(stream, ids) if with_entries else {}
            builder.add(ids, [found.get(i, ()) for i in ids])
            meta["consumer"] += [row.consumer for row in page]
            meta["idle"] += [row.idle_ms for row in page]
            meta["deliveries"] += [row.deliveries for row in page]
            meta["deleted"] += [i not in found if with_entries else None for i in ids]
            meta["due"] += _due_times(source, stream, group, page, claim_ms)
            bar.update(len(page))
    finally:
        bar.close()
    entries = builder.frame()
    head = _pending_columns(meta, owners, poison_threshold, claim_ms)
    return pd.concat([entries[["id", "ts"]], head, entries.drop(columns=["id", "ts"])], axis=1)


def _pending_pages(
    source: Fetcher,
    stream: str,
    group: str,
    *,
    bounds: tuple[str, str] | None,
    limit: int | None,
    consumer: str | None,
    min_idle: int | None,
    page_size: int,
) -> Iterable[list[PendingEntry]]:
    """Extended XPENDING pages from ``bounds[0]`` to ``bounds[1]``, at most ``limit`` rows."""
    if bounds is None:
        return
    start, end = bounds

    def page(lo: Any, size: int) -> list[PendingEntry]:
        return source.xpending(
            stream, group, lo, size, end=end, consumer=consumer, min_idle_ms=min_idle
        )

    yield from paged(page, start, limit, page_size, lambda row: "(" + row.id)


def _due_times(
    source: Fetcher, stream: str, group: str, page: Sequence[PendingEntry], claim_ms: int
) -> list[float | None]:
    """When each waiting retry of an XPENDING page is due (Unix ms; None for other rows)."""
    waiting = [row.id for row in page if row.consumer == RETRY_CONSUMER]
    if not waiting:
        return [None] * len(page)
    with translate_errors(stream, group):
        scores = source.redis.zmscore(retry_due_key(stream, group), waiting)
    now_ms = time.time() * 1000
    due = dict(zip(waiting, scores, strict=True))
    return [
        (due[row.id] if due[row.id] is not None else now_ms - row.idle_ms + claim_ms)
        if row.id in due
        else None
        for row in page
    ]


def _pending_columns(
    meta: Mapping[str, list[Any]], owners: Mapping[str, Any], poison: int, claim_ms: int
) -> pd.DataFrame:
    idle = pd.Series(meta["idle"], dtype="int64")
    deliveries = pd.Series(meta["deliveries"], dtype="Int64")
    consumers = pd.Series(meta["consumer"], dtype="str")
    owner_idle = consumers.map(owners.get).astype("Float64")
    deleted = pd.Series(meta["deleted"], dtype="boolean")
    due = pd.Series(meta.get("due") or [None] * len(idle), dtype="Float64").round()
    state = pd.Series("in_flight", index=idle.index, dtype="str")
    state = state.mask((owner_idle >= claim_ms).fillna(False), "dead_consumer")
    state = state.mask(consumers == RETRY_CONSUMER, "retry_wait")
    state = state.mask(deliveries > poison, "poison")
    state = state.mask(deleted.fillna(False), "trimmed")
    return pd.DataFrame({
        "consumer": consumers.astype("category"),
        "state": pd.Categorical(state, categories=PENDING_STATES),
        "deliveries": deliveries,
        "idle": pd.to_timedelta(idle, unit="ms").astype("timedelta64[ms]"),
        "consumer_idle": pd.to_timedelta(owner_idle.astype("float64"), unit="ms").astype(
            "timedelta64[ms]"
        ),
        "claimable": (idle >= claim_ms) & ~(due > time.time() * 1000).fillna(False).astype(bool),
        "retry_due_at": pd.to_datetime(due.astype("float64"), unit="ms", utc=True).astype(
            "datetime64[ms, UTC]"
        ),
        "deleted": deleted,
    })  # fmt: skip
