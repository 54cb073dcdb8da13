"""Streams and DLQs as DataFrames."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pandas as pd

from streamlab import _args
from streamlab._progress import NoProgress, progress_bar
from streamlab.client import ClientLike, dlq_name, translate_errors
from streamlab.errors import ArgumentError
from streamlab.frames._build import (
    DLQ_FRAME_RENAMES,
    STREAM_ALIASES,
    STREAM_COLUMNS,
    FrameBuilder,
    parse_paths,
)
from streamlab.frames._fetch import PAGE_SIZE, Fetcher, fetcher, gc_paused
from streamlab.ids import Bound, id_range
from streamlab.signatures import failure_signature

__all__ = [
    "DLQ_COLUMNS", "dlq_to_dataframe", "payload_paths", "read_pages", "stream_to_dataframe",
]  # fmt: skip

# The DLQ frame leads with what an investigator reads first: when, which event, which bug.
DLQ_COLUMNS = (
    "failed_at",
    "event_type",
    "tenant_id",
    "repository",
    "error_type",
    "error",
    "attempts",
    "event_id",
    "source_stream",
    "source_id",
    "group",
    "consumer",
    "timestamp",
    "retry_count",
    "payload",
    "auth_context",
    "traceback",
)


def read_pages(
    source: Fetcher,
    stream: str,
    *,
    since: Bound | None,
    until: Bound | None,
    limit: int | None,
    progress: bool | None,
    page_size: int = PAGE_SIZE,
) -> Iterator[list[Any]]:
    """XRANGE pages of ``stream`` from ``since`` to ``until`` (`streamlab.ids`), at most
    ``limit`` entries, ticking a progress bar when one is wanted.

    The arguments are checked here, before anything is read (the pages come later, lazily).
    """
    _args.name("stream", stream)
    limit = _args.optional_count("limit", limit)
    page_size = _args.count("page_size", page_size, minimum=1)
    bounds = id_range(since, until)
    return _pages(source, stream, bounds, limit=limit, progress=progress, page_size=page_size)


def _pages(
    source: Fetcher,
    stream: str,
    bounds: tuple[str, str] | None,
    *,
    limit: int | None,
    progress: bool | None,
    page_size: int,
) -> Iterator[list[Any]]:
    bar = progress_bar(progress, None, stream)
    try:
        if bounds is None or limit == 0:
            return
        if not isinstance(bar, NoProgress):
            with translate_errors(stream):
                length = int(source.redis.xlen(stream))
            bar.total = length if limit is None else min(limit, length)
        for page in source.pages(stream, *bounds, limit, page_size):
            yield page
            bar.update(len(page))
    finally:
        bar.close()


def payload_paths(payload_fields: Iterable[str] | None) -> list[str] | None:
    """``payload_fields`` checked: None, or a list (any iterable but a str) of JSON paths."""
    if payload_fields is None:
        return None
    if isinstance(payload_fields, str | bytes) or not isinstance(payload_fields, Iterable):
        raise ArgumentError(
            f"payload_fields: expected a list of paths like ['ref', 'sender.login'], "
            f"got {payload_fields!r}"
        )
    paths = list(payload_fields)
    for path in paths:
        if not isinstance(path, str):
            raise ArgumentError(f"payload_fields: expected str paths, got {path!r}")
    try:
        parse_paths(paths)
    except ValueError as exc:  # the builder's own reason, under the contract's error
        raise ArgumentError(str(exc)) from None
    return paths


def _fill(builder: FrameBuilder, pages: Iterable[list[Any]]) -> pd.DataFrame:
    with gc_paused():
        for page in pages:
            builder.add([entry[0] for entry in page], [entry[1] or () for entry in page])
    return builder.frame()


def stream_builder(
    payload_fields: Iterable[str] | None, *, paths_as_json: bool = False
) -> FrameBuilder:
    """The builder behind `stream_to_dataframe` (also used by `export_parquet`)."""
    return FrameBuilder(
        renames=STREAM_ALIASES,
        columns=STREAM_COLUMNS,
        paths=payload_paths(payload_fields),
        paths_as_json=paths_as_json,
    )


def stream_to_dataframe(
    client: ClientLike,
    stream: str,
    *,
    since: Bound | None = None,
    until: Bound | None = None,
    limit: int | None = None,
    payload_fields: Iterable[str] | None = None,
    progress: bool | None = None,
    page_size: int = PAGE_SIZE,
) -> pd.DataFrame:
    """One row per entry of ``stream``, typed, built column-wise from paged XRANGE.

    ``client`` is a `RedisStreamsClient` or a redis-py ``redis.Redis`` (bytes replies).
    ``since`` / ``until`` bound the entries read, inclusive: aware datetimes, timedeltas (that
    long ago), stream ids or milliseconds (`streamlab.ids`); ``limit`` caps the rows.

    Columns: ``id`` (stream id, str), ``ts`` (``datetime64[ms, UTC]`` from the id), then one
    column per field, always including ``event_id``, ``event_type``, ``repository``,
    ``tenant_id``, ``timestamp``, ``retry_count``, ``payload`` and ``auth_context`` (null when
    absent), then any other field under its own name, then ``payload.<path>`` for each of
    ``payload_fields``, then ``_decode_error`` and ``_raw``.

    Names: the platform's ``event_id`` and streamlab's ``id`` field are both ``event_id``
    (``id`` is the stream id); ``repo_name``/``repo`` are ``repository``; a missing
    ``tenant_id`` is read from ``auth_context``. An entry with both names of a field is read as
    `decode_event` reads it: streamlab's own name wins (`streamlab.records.read_name`) and the
    alias keeps its own name (a ``repo_name`` column next to ``repository``). A field whose
    name is taken keeps its own name with a ``_field`` suffix (``event_id_field`` for an
    ``event_id`` next to an ``id``; ``ts_field`` for a field ``ts``).

    Types, by column name as in every frame (`streamlab.frames.columns`): times
    (``timestamp``, ``failed_at``...) are ``datetime64[ms, UTC]``; counters (``retry_count``,
    ``attempts``) ``Int64``; event type, tenant, repository, sender, consumer, group, source
    stream and error type are ``category``; every other field is ``str``.
    ``payload`` and the other JSON fields stay JSON text: parsing every payload would cost
    more than reading it. ``payload_fields=["ref", "sender.login"]`` parses them once per
    entry and adds ``payload.ref`` and ``payload.sender.login`` (list items by index:
    ``"commits.0.id"``); ``"data:action"`` reads field ``data`` instead. Entries with no
    ``payload`` field (one JSON document per entry) are read from their ``data`` field, or
    from their only field; the column is still named ``payload.<path>``.

    Nothing is dropped: a value that is not UTF-8, a time or counter that does not parse, or
    a payload that is not JSON (when paths are asked) leaves a null (text: the value with
    bad bytes escaped) in its column, the field and reason in ``_decode_error`` and the
    exact bytes in ``_raw`` (``{field: bytes}``).

    A missing stream gives an empty frame with the standard columns; a key that is not a
    stream raises `streamlab.errors.WrongTypeError`. Memory is that of the frame plus one
    page; ``progress`` shows a tqdm bar (default: only in a notebook).
    """
    source = fetcher(client)
    pages = read_pages(
        source, stream, since=since, until=until, limit=limit, progress=progress,
        page_size=page_size,
    )  # fmt: skip
    return _fill(stream_builder(payload_fields), pages)


def dlq_to_dataframe(
    client: ClientLike,
    stream: str,
    *,
    dlq: str | None = None,
    since: Bound | None = None,
    until: Bound | None = None,
    limit: int | None = None,
    payload_fields: Iterable[str] | None = None,
    progress: bool | None = None,
) -> pd.DataFrame:
    """The DLQ of ``stream`` (``<stream>_dlq``, or ``dlq``), one row per dead letter.

    Columns, what an investigator reads first leading: ``id``, ``ts``, ``failed_at``,
    ``event_type``, ``tenant_id``, ``repository``, ``error_signature`` (see
    `streamlab.signatures.error_signature`; the error type is part of it), ``error_type``,
    ``error``, ``attempts`` (``Int64``), ``event_id``, ``source_stream``, ``source_id``,
    ``group``, ``consumer``, ``timestamp``, ``retry_count``, ``payload``, ``auth_context``,
    ``traceback``, then any other field: the failure fields without their ``dlq_`` prefix and
    the original event's columns typed exactly as `stream_to_dataframe` types them.
    ``since`` / ``until`` bound when the entries were dead-lettered; ``limit`` caps the rows.
    A RedisStreamsClient's own DLQ names (``dlq_names``) are honoured.
    """
    source = fetcher(client)
    name = dlq_name(source.client, stream, dlq)
    pages = read_pages(source, name, since=since, until=until, limit=limit, progress=progress)
    return with_signatures(_fill(dlq_builder(payload_fields), pages))


def dlq_builder(
    payload_fields: Iterable[str] | None, *, paths_as_json: bool = False
) -> FrameBuilder:
    """The builder behind `dlq_to_dataframe` (also used by `export_parquet`)."""
    return FrameBuilder(
        renames=DLQ_FRAME_RENAMES,
        columns=DLQ_COLUMNS,
        paths=payload_paths(payload_fields),
        paths_as_json=paths_as_json,
    )


def with_signatures(df: pd.DataFrame) -> pd.DataFrame:
    """A DLQ frame from `dlq_builder` with its ``error_signature`` column, before
    ``error_type``."""
    df.insert(list(df.columns).index("error_type"), "error_signature", _signatures(df))
    return df


def _signatures(df: pd.DataFrame) -> pd.Series:
    cache: dict[tuple[Any, Any, Any], str] = {}
    out = []
    for key in zip(
        df["error_type"].tolist(), df["error"].tolist(), df["traceback"].tolist(), strict=True
    ):
        signature = cache.get(key)
        if signature is None:
            kind, error, tb = (v if isinstance(v, str) else "" for v in key)
            signature = cache[key] = failure_signature(kind, error, tb)
        out.append(signature)
    return pd.Series(out, index=df.index, dtype=pd.CategoricalDtype(sorted(set(out))))
