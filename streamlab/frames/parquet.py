"""Streams to Parquet in chunks: constant memory, one fixed schema for the whole file."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from streamlab.frames._fetch import PAGE_SIZE, fetcher
from streamlab.frames.stream import Bound, read_pages, stream_builder

__all__ = ["RAW_TYPE", "export_parquet"]

RAW_TYPE = pa.map_(pa.string(), pa.binary())
EXTRA = "_extra"


def _schema(df: pd.DataFrame) -> pa.Schema:
    """The file's schema, from the first chunk: categories as int32 dictionaries (a later
    chunk may have more values), ``_raw`` as a map, plus ``_extra``."""
    base = pa.Schema.from_pandas(df.drop(columns=["_raw"]), preserve_index=False)
    fields = []
    for field in base:
        if pa.types.is_dictionary(field.type):
            fields.append(field.with_type(pa.dictionary(pa.int32(), field.type.value_type)))
        else:
            fields.append(field)
    fields += [pa.field("_raw", RAW_TYPE), pa.field(EXTRA, pa.string())]
    return pa.schema(fields, metadata=base.metadata)


def _extra(row: Mapping[Any, Any]) -> str | None:
    values = {str(k): str(v) for k, v in row.items() if v is not None and not pd.isna(v)}
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
    client: Any,
    stream: str,
    path: str | os.PathLike[str],
    *,
    start: Bound = "-",
    end: Bound = "+",
    count: int | None = None,
    payload_fields: Iterable[str] | None = None,
    chunk_rows: int = 100_000,
    compression: str = "zstd",
    progress: bool | None = None,
) -> int:
    """Write ``stream`` (rows as `stream_to_dataframe` makes them) to a Parquet file.

    Pages are read and written ``chunk_rows`` at a time (one row group each), so memory
    stays that of one chunk whatever the stream's size. The schema is fixed by the first
    chunk: a column absent from a later chunk is written as nulls, and a field that first
    appears later goes, as JSON text, into the ``_extra`` column (always present, null
    otherwise), so nothing is lost. ``_raw`` is a ``map<string, binary>``.
    ``pd.read_parquet(path)`` gives back the frame (plus ``_extra``). Returns the row count.
    """
    source = fetcher(client)
    builder = stream_builder(payload_fields)
    writer: pq.ParquetWriter | None = None
    schema = pa.schema([])
    written = 0

    def flush() -> None:
        nonlocal writer, written, schema
        frame = builder.frame()
        if writer is None:
            schema = _schema(frame)
            writer = pq.ParquetWriter(path, schema, compression=compression)
        writer.write_table(_conform(frame, schema))
        written += len(frame)

    pages = read_pages(
        source, stream, start=start, end=end, count=count, progress=progress,
        page_size=min(PAGE_SIZE, chunk_rows),
    )  # fmt: skip
    try:
        for page in pages:
            builder.add([entry[0] for entry in page], [entry[1] or () for entry in page])
            if builder.rows >= chunk_rows:
                flush()
        if builder.rows or writer is None:
            flush()
    finally:
        if writer is not None:
            writer.close()
    return written
