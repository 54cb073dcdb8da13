"""Raw stream entries to a typed DataFrame, column by column.

Each page of raw entries is split into one tuple of values per field (a C-level transpose of
the reply when every entry of the page has the same fields, which is the usual case), and
each tuple becomes one binary Arrow array. When the frame is asked for, each column is
decoded once over all its pages: UTF-8, times, counters (page by page only when some value
needs a report). Python touches each value once; nothing builds a dict per entry, and JSON
is parsed only for the paths asked for (``payload_fields``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from streamlab.frames.columns import TIME, dtype_of
from streamlab.records import (
    AUTH_CONTEXT_FIELD,
    DLQ_FIELDS,
    FIELD_ALIASES,
    REPLAY_FIELDS,
    read_name,
    tenant_of,
)

__all__ = [
    "DLQ_FRAME_RENAMES",
    "DLQ_RENAMES",
    "FIELD_SUFFIX",
    "STREAM_ALIASES",
    "STREAM_COLUMNS",
    "FrameBuilder",
    "column_names",
    "entry_fields",
    "ids_to_times",
    "json_array",
    "path_array",
    "to_pandas",
]

TS_MS = pa.timestamp("ms", tz="UTC")
TS_US = pa.timestamp("us", tz="UTC")

# The decoder's aliases, except that the event id is `event_id` whatever the writer called it:
# `id` is the stream id column. Of several names of one field, only the one the decoder reads
# (`read_name`) is renamed; the others keep their own names (`column_names`).
STREAM_ALIASES = {
    name: "event_id" if own == "id" else own for name, own in {"id": "id", **FIELD_ALIASES}.items()
}
DLQ_RENAMES = {name: name.removeprefix("dlq_") for name in DLQ_FIELDS}
STREAM_COLUMNS = (
    "event_id",
    "event_type",
    "repository",
    "tenant_id",
    "timestamp",
    "retry_count",
    "payload",
    "auth_context",
)
RESERVED = frozenset({"id", "ts", "_decode_error", "_raw"})
# The fields of events, failures and replay markers, typed by name as `columns` says; every
# other field of a stream is text.
_TYPED_FIELDS = frozenset(
    {*STREAM_COLUMNS, "sender_name", *DLQ_FIELDS, *DLQ_RENAMES.values(), *REPLAY_FIELDS}
)
TIME_FIELDS = frozenset(n for n in _TYPED_FIELDS if dtype_of(n) == TIME)
INT_FIELDS = frozenset(n for n in _TYPED_FIELDS if dtype_of(n) == "Int64")
CATEGORY_FIELDS = frozenset(n for n in _TYPED_FIELDS if dtype_of(n) == "category")
_TEXT_FIELDS = frozenset(n for n in _TYPED_FIELDS if dtype_of(n) in ("str", "category"))
_TYPES_MAPPER = {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}.get


def arrow_type(name: str) -> pa.DataType:
    """The Arrow type a field decodes to, from its (column) name."""
    if name in TIME_FIELDS:
        return TS_MS
    if name in INT_FIELDS:
        return pa.int64()
    return pa.string()


def ids_to_times(ids: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """``datetime64[ms, UTC]`` from stream ids: their milliseconds part."""
    ms = pc.list_element(pc.split_pattern(ids, "-", max_splits=1), 0)
    return pc.cast(pc.cast(ms, pa.int64()), TS_MS)


@dataclass(frozen=True, slots=True)
class PathSpec:
    """One JSON path to extract: column name, source field (None: the payload), keys."""

    column: str
    source: str | None
    keys: tuple[str, ...]


def parse_paths(paths: Iterable[str] | None) -> list[PathSpec]:
    """``"sender.login"`` reads the payload; ``"data:sender.login"`` reads field ``data``."""
    specs = []
    for path in paths or ():
        source, sep, rest = path.partition(":")
        if not sep:
            source, rest = "", path
        keys = tuple(rest.split("."))
        if not rest or not all(keys):
            raise ValueError(f"payload_fields: invalid JSON path {path!r}")
        specs.append(PathSpec(f"{source or 'payload'}.{rest}", source or None, keys))
    return specs


def _walk(doc: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        if isinstance(doc, dict):
            doc = doc.get(key)
        elif isinstance(doc, list) and key.lstrip("-").isdigit():
            index = int(key)
            doc = doc[index] if -len(doc) <= index < len(doc) else None
        else:
            return None
    return doc


def path_array(values: list[Any]) -> pa.Array:
    """Scalars keep their JSON type; objects, arrays and mixed types become JSON text."""
    try:
        arr = pa.array(values)
        if not (pa.types.is_nested(arr.type) or pa.types.is_null(arr.type)):
            return arr
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        pass
    if all(v is None for v in values):
        return pa.nulls(len(values), pa.string())
    return pa.array(
        [v if v is None or isinstance(v, str) else json.dumps(v) for v in values], pa.string()
    )


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """An Arrow table as a frame's columns: nullable ints, categories in sorted order."""
    columns = [
        _sorted_dictionary(column) if pa.types.is_dictionary(column.type) else column
        for column in table.columns
    ]
    table = pa.Table.from_arrays(columns, schema=table.schema)
    df: pd.DataFrame = table.to_pandas(types_mapper=_TYPES_MAPPER)
    return df


def _sorted_dictionary(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """``column`` with one dictionary, in sorted order (Arrow's byte order of UTF-8 text is
    Python's order of the strings). Sorted here rather than with pandas'
    ``reorder_categories``, whose fixed cost per column dominated small frames."""
    column = column.unify_dictionaries()
    if column.num_chunks == 0:
        return column
    dictionary = column.chunk(0).dictionary
    order = pc.array_sort_indices(dictionary).to_numpy()
    if np.array_equal(order, np.arange(len(order))):  # already in order
        return column
    rank = np.empty(len(order), dtype=np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    ranks, in_order = pa.array(rank), dictionary.take(order)
    return pa.chunked_array(
        [
            pa.DictionaryArray.from_arrays(pc.take(ranks, chunk.indices), in_order)
            for chunk in column.chunks
        ],
        type=column.type,
    )


def json_array(values: list[Any]) -> pa.Array:
    """Every value as JSON text (None stays null): one type whatever the values."""
    return pa.array(
        [None if v is None else json.dumps(v, ensure_ascii=False) for v in values], pa.string()
    )


FIELD_SUFFIX = "_field"
DLQ_FRAME_RENAMES = {**STREAM_ALIASES, **DLQ_RENAMES}
"""The renames of a DLQ frame (`streamlab.frames.dlq_to_dataframe`)."""


def column_names(fields: Sequence[str], renames: Mapping[str, str]) -> list[str]:
    """The frame column of each of an entry's fields (names as text, in the entry's order), as
    a `FrameBuilder` with ``renames`` names them.

    Renamed fields first, so that ``dlq_group`` gets ``group`` even when the original event
    had a field ``group`` too (that one becomes ``group_field``). Of the names of one field,
    the one decoding reads (`read_name`: streamlab's own over an alias) is renamed, the others
    keep their own names, as they are kept in `StreamEvent.extra` (``repo_name`` next to
    ``repository``; ``event_id`` next to ``id`` becomes ``event_id_field``). A name that is
    `RESERVED` or taken keeps itself with `FIELD_SUFFIX`; one field twice in an entry (XADD
    allows it) is numbered. `entry_fields` is the inverse.
    """
    chosen: list[str | None] = [None] * len(fields)
    taken: set[str] = set()
    present = frozenset(fields)
    for i, text in enumerate(fields):
        target = renames.get(text)
        if (
            target is not None
            and target not in taken
            and read_name(FIELD_ALIASES.get(text, text), present) == text
        ):
            chosen[i] = target
            taken.add(target)
    for i, text in enumerate(fields):
        if chosen[i] is None:
            name = f"{text}{FIELD_SUFFIX}" if text in RESERVED or text in taken else text
            base, n = name, 2
            while name in taken:
                name, n = f"{base}_{n}", n + 1
            chosen[i] = name
            taken.add(name)
    return [name for name in chosen if name is not None]


def entry_fields(columns: Iterable[str], renames: Mapping[str, str]) -> dict[str, str]:
    """The fields of the entry behind a frame row, each mapped to the column holding it: the
    inverse of `column_names`, for a row whose columns with a value are ``columns`` (of a
    `FrameBuilder` with ``renames``), to rebuild the entry (`DLQFilter`'s ``where``).

    A renamed column gives the name decoding reads (``id`` for ``event_id``, ``dlq_error`` for
    ``error``), a suffixed one its field's own name (``event_id`` for ``event_id_field``). A
    field kept under its own name beside the one decoding reads shows that one was there:
    when its column has no value, the value was empty (a frame holds it as null) and the field
    is still listed, under that column. `RESERVED` columns are the builder's, not fields. Each
    guess is checked with `column_names`; a column it does not give back is its own field. A
    row can read two ways only when an entry has a field named like a suffixed column
    (``event_id_field`` without ``id``): it is read as the suffixed field.
    """
    own = {column: FIELD_ALIASES.get(name, name) for name, column in renames.items()}
    given = [column for column in columns if column not in RESERVED]
    fields = {own.get(column, column): column for column in given}
    for column in given:  # a suffix guessed off, unless that name is some column's field
        stem = column.removesuffix(FIELD_SUFFIX)
        if stem != column and stem not in fields:
            del fields[column]
            fields[stem] = column
    for field, column in list(fields.items()):
        winner = renames.get(field)
        if winner is not None and winner != column and winner not in given:
            fields.setdefault(own[winner], winner)
    named = dict(zip(fields, column_names(list(fields), renames), strict=True))
    return {field if named[field] == column else column: column for field, column in fields.items()}


class FrameBuilder:
    """Accumulates pages of raw entries; `frame` returns them as one typed DataFrame.

    ``renames`` maps field names to column names; ``columns`` are always present (filled
    with nulls when no entry has them) so frames of one kind always have the same columns.
    """

    def __init__(
        self,
        *,
        renames: Mapping[str, str],
        columns: Sequence[str],
        paths: Iterable[str] | None = None,
        tenant_from_auth: bool = True,
        paths_as_json: bool = False,
    ) -> None:
        self.renames = dict(renames)
        self.base = tuple(columns)
        self.paths = parse_paths(paths)
        self.tenant_from_auth = tenant_from_auth
        # Chunked writers need a type per path column that no later chunk can contradict.
        self.paths_as_json = paths_as_json
        self._names: dict[tuple[bytes, ...], list[str]] = {}
        self.reset()

    def reset(self) -> None:
        """Forget the rows added so far (column names seen are kept)."""
        self.rows = 0
        self._sizes: list[int] = []
        self._ids: list[pa.Array] = []
        self._cols: dict[str, dict[int, pa.Array]] = {name: {} for name in self.base}
        self._path_values: dict[str, list[Any]] = {p.column: [] for p in self.paths}
        # (row, (phase, field's place in its page), field, reason, raw): phase 0 for JSON paths
        # (found in `add`), 1 for conversions (found in `table`); `frame` sorts by the first two
        # so that a row's reasons read in the order its page's fields had.
        self._errors: list[tuple[int, tuple[int, int], str, str, bytes]] = []
        self._fields: list[dict[str, int]] = []  # per page: field -> place in the page
        self._converted: dict[str, pa.ChunkedArray] = {}
        self._offset = 0  # first row of the page whose errors are being recorded
        self._order = (0, 0)

    # -- per page ----------------------------------------------------------------------------

    def add(self, ids: Sequence[bytes], flats: Sequence[Sequence[Any]]) -> None:
        """Add one page: entry ids and their flat ``[name, value, ...]`` field lists."""
        n = len(ids)
        if not n:
            return
        page = len(self._sizes)
        raw = self._split(flats, n)
        if self.tenant_from_auth:
            self._fill_tenant(raw, n)
        self._offset, self._order = self.rows, (0, 0)
        self._extract_paths(raw, n)
        # Only the Python values become Arrow (binary) here; decoding them (UTF-8, times,
        # counters) waits for `table`, which runs each kernel once per column, not per page.
        for name, values in raw.items():
            self._cols.setdefault(name, {})[page] = pa.array(values, pa.binary())
        self._fields.append({name: i for i, name in enumerate(raw)})
        self._converted.clear()
        self._ids.append(pa.array(ids, pa.binary()).cast(pa.string()))
        self._sizes.append(n)
        self.rows += n

    def _column_names(self, keys: tuple[bytes, ...]) -> list[str]:
        # Decided once per layout: the columns stay vectorised.
        names = self._names.get(keys)
        if names is None:
            texts = [
                k.decode("utf-8", "backslashreplace") if isinstance(k, bytes) else k for k in keys
            ]
            names = self._names[keys] = column_names(texts, self.renames)
        return names

    def _split(self, flats: Sequence[Sequence[Any]], n: int) -> dict[str, Sequence[Any]]:
        first = flats[0]
        step = len(first)
        # Every entry with as many fields as the first (C-level length checks), then each
        # name position holding the first entry's name in every entry: the page has one
        # layout, and transposing it gives each field's values as one tuple.
        if step and set(map(len, flats)) == {step}:
            columns = list(zip(*flats, strict=True))
            if all(columns[j].count(first[j]) == n for j in range(0, step, 2)):
                names = self._column_names(tuple(first[0::2]))
                return {name: columns[2 * j + 1] for j, name in enumerate(names)}
        by_name: dict[str, list[Any]] = {}
        for row, fields in enumerate(flats):
            for name, value in zip(
                self._column_names(tuple(fields[0::2])), fields[1::2], strict=True
            ):
                by_name.setdefault(name, [None] * n)[row] = value
        return dict(by_name)

    def _fill_tenant(self, raw: dict[str, Sequence[Any]], n: int) -> None:
        # Platform entries carry the tenant only inside auth_context: `tenant_of`, the rule
        # decode_event follows, on the rows without a tenant (none: the page is left alone).
        auth = raw.get(AUTH_CONTEXT_FIELD)
        tenants = raw.get("tenant_id")
        if auth is None or (tenants is not None and all(tenants)):
            return
        filled = list(tenants) if tenants is not None else [None] * n
        for row, (tenant, context) in enumerate(zip(filled, auth, strict=True)):
            if not tenant and (value := tenant_of(None, context)):
                filled[row] = value.encode()
        raw["tenant_id"] = filled

    def _extract_paths(self, raw: dict[str, Sequence[Any]], n: int) -> None:
        by_source: dict[str | None, list[PathSpec]] = {}
        for spec in self.paths:
            by_source.setdefault(spec.source, []).append(spec)
        for source, specs in by_source.items():
            field = source or self._default_json_field(raw)
            out = {spec.column: [None] * n for spec in specs}
            for row, value in enumerate(raw.get(field, ()) if field else ()):
                if not value:
                    continue
                try:
                    doc = json.loads(value)
                except ValueError as exc:
                    self._error(row, field or "", f"invalid JSON ({exc})", value)
                    continue
                except RecursionError:
                    self._error(row, field or "", "JSON nested too deep to parse", value)
                    continue
                for spec in specs:
                    out[spec.column][row] = _walk(doc, spec.keys)
            for column, values in out.items():
                self._path_values[column].extend(values)

    @staticmethod
    def _default_json_field(raw: Mapping[str, Sequence[Any]]) -> str | None:
        # Entries holding one JSON document in one field: `data`, or whatever the only field is.
        for name in ("payload", "data"):
            if name in raw:
                return name
        present = [name for name, values in raw.items() if any(v is not None for v in values)]
        return present[0] if len(present) == 1 else None

    def _error(self, row: int, field: str, reason: str, value: Any) -> None:
        raw = value if isinstance(value, bytes) else str(value).encode()
        self._errors.append((self._offset + row, self._order, field, reason, raw))

    def _convert_all(self, name: str, binary: pa.ChunkedArray) -> pa.ChunkedArray:
        """A field's pages decoded at once; when any value needs a report (or fails), page by
        page as `_convert` does, each page's errors recorded at its own rows."""
        try:
            out = _decode_clean(name, binary)
        except pa.ArrowInvalid:
            out = None
        if out is not None:
            return out
        chunks = []
        for page, chunk in enumerate(binary.chunks):
            self._offset = sum(self._sizes[:page])
            self._order = (1, self._fields[page].get(name, 0))
            chunks.append(self._convert(name, chunk))
        return pa.chunked_array(chunks, arrow_type(name))

    def _convert(self, name: str, binary: pa.Array) -> pa.Array:
        try:
            text = binary.cast(pa.string())
        except pa.ArrowInvalid:
            text = self._repair_utf8(name, binary.to_pylist())
        target = arrow_type(name)
        if target == pa.string():
            # streamlab's own fields: an empty value is a missing one (NA); others stay as written.
            if name in _TEXT_FIELDS and pc.any(pc.equal(text, "")).as_py():
                text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
            return text
        # Times parse to microseconds (RFC 3339 allows any precision), then keep milliseconds.
        parse = TS_US if target == TS_MS else target
        try:
            out = text.cast(parse)
        except pa.ArrowInvalid:
            out = self._coerce(name, text, parse)
        else:
            if parse == TS_US and pc.any(_outside_years(out)).as_py():
                out = self._coerce(name, text, parse)
        return out.cast(TS_MS, safe=False) if target == TS_MS else out

    def _repair_utf8(self, name: str, values: Sequence[Any]) -> pa.Array:
        decoded: list[str | None] = []
        for row, value in enumerate(values):
            if value is None:
                decoded.append(None)
                continue
            try:
                decoded.append(value.decode())
            except UnicodeDecodeError as exc:
                self._error(row, name, f"not UTF-8 ({exc.reason} at byte {exc.start})", value)
                decoded.append(value.decode("utf-8", "backslashreplace"))
        return pa.array(decoded, pa.string())

    def _coerce(self, name: str, text: pa.Array, target: pa.DataType) -> pa.Array:
        strings = text.to_pylist()
        if target == TS_US:
            parsed = pd.to_datetime(
                pd.Series(strings, dtype=object), format="ISO8601", utc=True, errors="coerce"
            )
            out = pa.array(parsed.dt.as_unit("us"), TS_US)
            out = pc.if_else(_outside_years(out), pa.scalar(None, TS_US), out)
            kind = "not an RFC 3339 time"
        else:
            ints = [_int_or_none(s) for s in strings]
            fits = [v if v is None or _INT64_MIN <= v <= _INT64_MAX else None for v in ints]
            out = pa.array(fits, pa.int64())
            kind = "not an integer"
        # Validity, not values: a time's value may be beyond what Python's datetime holds.
        valid = out.is_valid().to_pylist()
        for row, (source, ok) in enumerate(zip(strings, valid, strict=True)):
            if source not in (None, "") and not ok:
                wide = target != TS_US and ints[row] is not None
                self._error(row, name, "integer out of the 64-bit range" if wide else kind, source)
        return out

    # -- result ------------------------------------------------------------------------------

    def _chunked(self, name: str) -> pa.ChunkedArray:
        done = self._converted.get(name)
        if done is not None:
            return done
        pages = self._cols.get(name, {})
        chunks = [pages.get(i, pa.nulls(size, pa.binary())) for i, size in enumerate(self._sizes)]
        column = self._convert_all(name, pa.chunked_array(chunks, pa.binary()))
        if name in CATEGORY_FIELDS:
            column = pc.dictionary_encode(column.combine_chunks())
        self._converted[name] = column
        return column

    def table(self) -> pa.Table:
        """The rows added so far as an Arrow table (without ``_decode_error`` / ``_raw``)."""
        ids = pa.chunked_array(self._ids, pa.string())
        arrays: dict[str, Any] = {"id": ids, "ts": ids_to_times(ids)}
        for name in self._cols:
            arrays[name] = self._chunked(name)
        for column, values in self._path_values.items():
            arrays[column] = json_array(values) if self.paths_as_json else path_array(values)
        return pa.table(arrays)

    def frame(self) -> pd.DataFrame:
        """The rows added so far as a DataFrame, then `reset`."""
        df = to_pandas(self.table())
        errors: list[str | None] = [None] * self.rows
        raws: list[dict[str, bytes] | None] = [None] * self.rows
        for row, _order, field, reason, raw in sorted(self._errors, key=lambda e: e[:2]):
            message = f"{field}: {reason}"
            errors[row] = message if errors[row] is None else f"{errors[row]}; {message}"
            raws[row] = {**(raws[row] or {}), field: raw}
        df["_decode_error"] = pd.Series(errors, dtype="str", index=df.index)
        df["_raw"] = pd.Series(raws, dtype=object, index=df.index)
        self.reset()
        return df


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# RFC 3339 years: 0001 to 9999 (also all that Python's datetime holds).
_FIRST_TIME = pa.scalar(datetime(1, 1, 1, tzinfo=UTC), TS_US)
_LAST_TIME = pa.scalar(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), TS_US)


def _decode_clean(name: str, binary: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """`FrameBuilder._convert` in one pass over a whole column, for columns with nothing to
    report: None (or ArrowInvalid) when some value needs `_convert`'s checks."""
    text = binary.cast(pa.string())
    target = arrow_type(name)
    if target == pa.string():
        if name in _TEXT_FIELDS and pc.any(pc.equal(text, "")).as_py():
            text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
        return text
    if target != TS_MS:
        return text.cast(target)
    times = text.cast(TS_US)
    if pc.any(_outside_years(times)).as_py():
        return None
    return times.cast(TS_MS, safe=False)


def _outside_years(times: pa.Array) -> pa.Array:
    """True where a time lies outside years 1 to 9999 (null stays null)."""
    return pc.or_(pc.less(times, _FIRST_TIME), pc.greater(times, _LAST_TIME))


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None
