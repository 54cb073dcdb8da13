"""Streams to Parquet in chunks: constant memory, one fixed schema for the whole file."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from streamlab import _args
from streamlab.client import ClientLike
from streamlab.errors import ArgumentError
from streamlab.frames._build import (
    CATEGORY_FIELDS,
    TS_MS,
    TS_US,
    arrow_type,
    path_array,
    to_pandas,
)
from streamlab.frames._fetch import PAGE_SIZE, fetcher, gc_paused
from streamlab.frames.stream import dlq_builder, read_pages, stream_builder, with_signatures
from streamlab.ids import Bound, StreamId, bound, id_text, parse_id

if TYPE_CHECKING:
    from streamlab.filters import DLQFilter

__all__ = ["RAW_TYPE", "export_parquet", "read_parquet"]

RAW_TYPE = pa.map_(pa.string(), pa.binary())
EXTRA = "_extra"
_PROBE = pa.schema([pa.field("x", pa.int8())])
# Schema metadata naming the columns written as JSON text (the ``payload_fields`` paths).
META = b"streamlab.json_columns"


def _schema(df: pd.DataFrame, json_columns: list[str]) -> pa.Schema:
    """The file's schema, from the first chunk: categories as int32 dictionaries (a later
    chunk may have more values), ``payload_fields`` paths as JSON text (a later chunk may hold
    another JSON type), ``_raw`` as a map, plus ``_extra``."""
    base = pa.Schema.from_pandas(df.drop(columns=["_raw"]), preserve_index=False)
    fields = []
    for field in base:
        if isinstance(df[field.name].dtype, pd.CategoricalDtype):
            # An empty category column has no value type to go by: it holds text.
            value_type = getattr(field.type, "value_type", pa.null())
            text = pa.string() if pa.types.is_null(value_type) else value_type
            fields.append(field.with_type(pa.dictionary(pa.int32(), text)))
        elif pa.types.is_null(field.type):
            fields.append(field.with_type(arrow_type(field.name)))
        else:
            fields.append(field)
    fields += [pa.field("_raw", RAW_TYPE), pa.field(EXTRA, pa.string())]
    return pa.schema(fields, metadata={**(base.metadata or {}), META: json.dumps(json_columns)})


def _text(value: Any) -> str:
    return value.isoformat() if isinstance(value, pd.Timestamp) else str(value)


def _extra(row: Mapping[Any, Any]) -> str | None:
    values = {str(k): _text(v) for k, v in row.items() if v is not None and not pd.isna(v)}
    return json.dumps(values) if values else None


def _conform(df: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """Fit a chunk to the schema: absent columns as nulls, unforeseen ones into ``_extra``."""
    names = set(schema.names)
    unforeseen = [c for c in df.columns if c not in names]
    extra = [_extra(row) for row in df[unforeseen].to_dict("records")] if unforeseen else None
    df = df.drop(columns=unforeseen)
    df[EXTRA] = pd.Series(extra if extra is not None else [None] * len(df), dtype="str")
    arrays = []
    for field in schema:
        if field.name not in df.columns:
            arrays.append(pa.nulls(len(df), field.type))
            continue
        column = df[field.name]
        if field.name == "_raw":
            arrays.append(
                pa.array([None if v is None else list(v.items()) for v in column], RAW_TYPE)
            )
            continue
        if pa.types.is_string(field.type) and column.dtype != "str":
            column = column.astype("str")
        arrays.append(pa.Array.from_pandas(column, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def export_parquet(
    client: ClientLike,
    stream: str,
    path: str | os.PathLike[str],
    *,
    dlq: bool | str = False,
    since: Bound | None = None,
    until: Bound | None = None,
    limit: int | None = None,
    ids: Iterable[str] | None = None,
    filters: DLQFilter | None = None,
    payload_fields: Iterable[str] | None = None,
    chunk_rows: int = 100_000,
    compression: str = "zstd",
    progress: bool | None = None,
) -> int:
    """Write ``stream`` (rows as `stream_to_dataframe` makes them) to a Parquet file.

    Pages are read and written ``chunk_rows`` at a time (one row group each), so memory
    stays that of one chunk whatever the stream's size. The schema is fixed by the first
    chunk: a column absent from a later chunk is written as nulls, a field that first appears
    later goes into the ``_extra`` column (a JSON object per row, null otherwise), and the
    ``payload_fields`` columns hold each value as JSON text, so that no later chunk can
    contradict the schema and nothing is lost. ``_raw`` is a ``map<string, binary>``.
    `read_parquet` gives back exactly the frame `stream_to_dataframe` makes of the same entries;
    ``pd.read_parquet`` (or any Parquet reader) sees the stored columns. Returns the row count.

    ``dlq=True`` writes the DLQ of ``stream`` instead (as the client names it; ``dlq="name"``
    names it), rows as `dlq_to_dataframe` makes them: failure fields without their ``dlq_``
    prefix and ``error_signature``, so that ``dlq_summary(read_parquet(path))`` works on the
    copy. ``since`` / ``until`` then bound when the entries were dead-lettered.

    ``ids`` writes only the entries with those ids (a filtered selection, such as
    `select_dlq`'s ``ids``): the range read is narrowed to their span, other entries in it are
    skipped (``limit`` then caps the entries read), and ids no longer in the stream are not
    written: the file's ``id`` column says which were.

    ``filters`` (a `DLQFilter`, with ``dlq``) writes only the dead letters it matches (as
    `DLQFilter.apply` on each chunk; its ``ids`` narrow the range read as ``ids`` does), in
    the one read: ``limit`` then caps the dead letters written, as `select_dlq`'s caps those
    selected, and reading stops at the page where that many matched.
    """
    if not isinstance(dlq, bool | str) or dlq == "":
        raise ArgumentError(f"dlq: must be True, False or a DLQ stream name, got {dlq!r}")
    _args.name("stream", stream)
    chunk_rows = _args.count("chunk_rows", chunk_rows, minimum=1)
    limit = _args.optional_count("limit", limit)
    _check_compression(compression)
    # ``matches``: with a filter, the cap on the rows written (``limit`` then caps no read).
    wanted, filters, matches, since, until, limit = _to_write(
        ids, filters, dlq, since=since, until=until, limit=limit
    )
    source = fetcher(client)
    if dlq is False:
        builder, finish = stream_builder(payload_fields, paths_as_json=True), _same
    else:
        builder, finish = dlq_builder(payload_fields, paths_as_json=True), with_signatures
        stream = source.dlq_stream(stream) if dlq is True else dlq
    json_columns = [spec.column for spec in builder.paths]
    writer: pq.ParquetWriter | None = None
    schema = pa.schema([])
    written = 0

    def flush(last: bool = False) -> None:
        nonlocal writer, written, schema
        frame = finish(builder.frame())
        if filters is not None:
            frame = _matching(frame, filters, None if matches is None else matches - written)
            # The schema comes from the first chunk written: one with rows, unless none has.
            if frame.empty and not (last and writer is None):
                return
        if writer is None:
            schema = _schema(frame, json_columns)
            writer = pq.ParquetWriter(path, schema, compression=compression)
        writer.write_table(_conform(frame, schema))
        written += len(frame)

    pages = read_pages(
        source, stream, since=since, until=until, limit=limit, progress=progress,
        page_size=min(PAGE_SIZE, chunk_rows),
    )  # fmt: skip
    try:
        entries = iter(pages) if wanted is None else _only(pages, wanted)
        while True:
            # The collector is paused for reading and decoding (see `gc_paused`), not for
            # writing a chunk: pandas and Parquet may leave cycles, and memory stays bounded.
            with gc_paused():
                page = next(entries, None)
                if page is not None:
                    builder.add([entry[0] for entry in page], [entry[1] or () for entry in page])
            if page is None:
                break
            # With a cap on matches each page is filtered as it comes, so that reading stops
            # where that many matched.
            if builder.rows >= chunk_rows or (matches is not None and builder.rows):
                flush()
                if matches is not None and written >= matches:
                    break
        if builder.rows or writer is None:
            flush(last=True)
    finally:
        if writer is not None:
            writer.close()
    return written


def _dlq_filter(filters: object, dlq: bool | str) -> DLQFilter | None:
    """``filters`` checked: a `DLQFilter` of the DLQ's entries, None when it filters nothing."""
    from streamlab.filters import check_filter

    flt = check_filter(filters)
    if flt is None:
        return None
    if dlq is False:
        raise ArgumentError("filters: they select dead letters; pass dlq=True (or its name)")
    return flt or None


def _to_write(
    ids: Iterable[str] | None,
    filters: object,
    dlq: bool | str,
    *,
    since: Bound | None,
    until: Bound | None,
    limit: int | None,
) -> tuple[frozenset[str] | None, DLQFilter | None, int | None, Bound | None, Bound | None,
           int | None]:  # fmt: skip
    """What `export_parquet` writes: the ids asked for, the filter and the cap on the matches
    it writes, and the bounds and limit of the one read (the span of the ids, if any)."""
    wanted = None
    if ids is not None:
        wanted, since, until, limit = _wanted(ids, since, until, limit)
    flt = _dlq_filter(filters, dlq)
    if flt is None:
        return wanted, None, None, since, until, limit
    read = 0 if limit == 0 else None
    if flt.ids is not None:
        _, since, until, read = _wanted(flt.ids, since, until, read)
    return wanted, flt, limit, since, until, read


def _matching(frame: pd.DataFrame, filters: DLQFilter, cap: int | None) -> pd.DataFrame:
    """The rows of a DLQ chunk ``filters`` keeps (at most ``cap``), indexed from 0 as a chunk
    is, their categories only the values they hold (as a chunk of just them would have)."""
    kept = filters.apply(frame).iloc[:cap].reset_index(drop=True)
    for name in kept.columns:
        if isinstance(kept[name].dtype, pd.CategoricalDtype):
            kept[name] = kept[name].cat.remove_unused_categories()
    return kept


def _check_compression(compression: object) -> None:
    """Refuse a codec before reading anything: pyarrow would only say so when the first chunk
    is written, and with an `AttributeError` for a non-str. pyarrow itself judges the name,
    on a writer to memory, so that the list of codecs is its own."""
    if compression is None:
        return
    if isinstance(compression, str):
        try:
            pq.ParquetWriter(pa.BufferOutputStream(), _PROBE, compression=compression).close()
            return
        except (pa.ArrowException, ValueError):
            pass
    raise ArgumentError(
        f"compression: expected a Parquet codec name ('zstd', 'snappy', 'gzip', 'lz4', "
        f"'brotli', 'none') or None, got {compression!r}"
    )


def _same(df: pd.DataFrame) -> pd.DataFrame:
    return df


def _text_id(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _wanted(
    ids: Iterable[str], since: Bound | None, until: Bound | None, limit: int | None
) -> tuple[frozenset[str], Bound | None, Bound | None, int | None]:
    """The ids asked for, and the bounds and limit that read only their span."""
    if isinstance(ids, str | bytes) or not isinstance(ids, Iterable):
        raise ArgumentError(f"ids: expected a list of entry ids, got {ids!r}")
    parsed = sorted({parse_id(i, "ids") for i in ids})
    if not parsed:
        return frozenset(), since, until, 0
    # Only the span of the ids is read; the caller's bounds still apply within it.
    since, until = _narrowed(since, until, parsed[0], parsed[-1])
    return frozenset(id_text(p) for p in parsed), since, until, limit


def _narrowed(
    since: Bound | None, until: Bound | None, first: StreamId, last: StreamId
) -> tuple[str, str]:
    """The caller's bounds narrowed to ``first`` .. ``last`` (the span of the ids asked for)."""
    lo = first if since is None else max(first, bound(since, "since", upper=False))
    hi = last if until is None else min(last, bound(until, "until", upper=True))
    return id_text(lo), id_text(hi)


def _only(pages: Iterable[list[Any]], wanted: frozenset[str]) -> Iterator[list[Any]]:
    """Each page with only the entries whose ids are ``wanted``."""
    for page in pages:
        yield [e for e in page if _text_id(e[0]) in wanted]


def read_parquet(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a file written by `export_parquet` back as the frame `stream_to_dataframe` gives
    (with ``dlq=``: the frame `dlq_to_dataframe` gives).

    ``payload_fields`` columns get their JSON types back, fields that first appeared after the
    first chunk become columns again (typed like the exporter types them), and ``_raw`` holds
    dicts again.
    """
    table = pq.read_table(path)
    if not {"_raw", EXTRA} <= set(table.column_names):
        raise ArgumentError(
            f"path: {os.fspath(path)!r} was not written by export_parquet (it has no _raw and "
            f"{EXTRA} columns); read it with pd.read_parquet"
        )
    json_columns: list[str] = json.loads((table.schema.metadata or {}).get(META, b"[]"))
    raw = table.column("_raw").to_pylist()
    extras = [None if v is None else json.loads(v) for v in table.column(EXTRA).to_pylist()]
    # The frame's order: known columns, other fields by first appearance, paths, errors.
    names = [n for n in table.column_names if n not in ("_raw", EXTRA)]
    before = next((n for n in (*json_columns, "_decode_error") if n in names), None)
    at = names.index(before) if before else len(names)
    late = list(dict.fromkeys(key for row in extras if row for key in row))
    arrays = [table.column(n) for n in names[:at]]
    arrays += [_typed(key, [row.get(key) if row else None for row in extras]) for key in late]
    for name in names[at:]:
        column = table.column(name)
        if name in json_columns:
            column = path_array([None if v is None else json.loads(v) for v in column.to_pylist()])
        arrays.append(column)
    df = to_pandas(pa.table(arrays, names=[*names[:at], *late, *names[at:]]))
    df["_raw"] = pd.Series([None if v is None else dict(v) for v in raw], dtype=object)
    return df


def _typed(name: str, values: list[str | None]) -> pa.Array:
    """A late field's column as the exporter types it: times, counters, categories, text."""
    target = arrow_type(name)
    text = pa.array(values, pa.string())
    # Times were written with isoformat: parse their microseconds, keep the milliseconds.
    column = text.cast(TS_US).cast(TS_MS, safe=False) if target == TS_MS else text.cast(target)
    return pc.dictionary_encode(column) if name in CATEGORY_FIELDS else column
