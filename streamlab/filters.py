"""`DLQFilter`: which dead letters, in one vocabulary for Python, the notebook and the CLI.

The keywords are the DLQ frame's column names (`streamlab.frames.dlq_to_dataframe`):
``event_type``, ``tenant_id``, ``repository``, ``error_type`` and ``error_signature``, each
one value or a list of values; plus ``error_contains`` (a case-insensitive substring of the
error), ``ids`` (DLQ entry ids: a list, or a pandas Series / Index such as a filtered frame's
``id`` column) and ``where`` (a predicate on the decoded `StreamEvent`). Every keyword given
must match (AND); a list matches any of its values (OR). On a frame, ``where`` sees the event
decoded from the row turned back into the entry's fields (`streamlab.frames._build.entry_fields`):
the one the raw entry decodes to, but for what a frame does not keep (finer than millisecond
times, empty values of streamlab's own fields, which it holds as null).

`select_dlq`, `replay_dlq`, `streamlab.widgets.DLQBrowser` and the CLI (``--event-type``,
``--tenant-id``... repeatable) take these keywords, `export_parquet` a `DLQFilter`;
`DLQFilter.apply` runs the same filter on a DLQ frame, `DLQFilter.matches` on a raw DLQ
entry, and both agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Protocol

from streamlab.errors import ArgumentError
from streamlab.ids import id_text, parse_id

if TYPE_CHECKING:
    import pandas as pd

    from streamlab.events import StreamEvent

__all__ = ["COLUMNS", "KEYWORDS", "DLQFilter", "check_filter"]

# Keywords matched against a DLQ frame column of the same name.
COLUMNS = ("event_type", "tenant_id", "repository", "error_type", "error_signature")
KEYWORDS = (*COLUMNS, "error_contains", "ids", "where")


class FilterableEntry(Protocol):
    """What `DLQFilter.matches` reads of a DLQ entry."""

    id: str

    def column(self, name: str) -> str:
        """The entry's value of a DLQ frame column (``''`` when absent)."""

    def event(self) -> StreamEvent | None:
        """The decoded event; None when the entry does not decode."""


def _values(name: str, value: str | Iterable[str]) -> frozenset[str]:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        return frozenset([value])
    try:
        items = frozenset(str(v) for v in value)
    except TypeError:
        raise ArgumentError(
            f"{name}: expected a string or a list of strings, got {value!r}"
        ) from None
    return items


def _ids(value: Any) -> frozenset[str]:
    # A pandas Series / Index (or any iterable) of ids: iterate it, no pandas import needed.
    items = value.tolist() if hasattr(value, "tolist") else value
    if isinstance(items, str | bytes):
        items = [items]
    return frozenset(id_text(parse_id(v, "ids")) for v in items)


@dataclass(frozen=True, slots=True)
class DLQFilter:
    """Which DLQ entries (see the module docstring); an empty filter matches everything.

    Build one with `DLQFilter.of` (``DLQFilter.of(event_type="webhook.github.push",
    tenant_id=["tenant-001", "tenant-002"])``), which normalises values and names a bad one.
    """

    event_type: frozenset[str] | None = None
    tenant_id: frozenset[str] | None = None
    repository: frozenset[str] | None = None
    error_type: frozenset[str] | None = None
    error_signature: frozenset[str] | None = None
    error_contains: str | None = None
    ids: frozenset[str] | None = None
    where: Callable[[StreamEvent], bool] | None = None

    @classmethod
    def of(cls, base: DLQFilter | None = None, /, **keywords: Any) -> DLQFilter:
        """A filter from keywords (None leaves one out), on top of ``base`` when given.

        An unknown keyword raises `TypeError` naming it and listing the known ones.
        """
        unknown = sorted(set(keywords) - set(KEYWORDS))
        if unknown:
            raise TypeError(
                f"unknown filter {', '.join(unknown)}; filters are {', '.join(KEYWORDS)}"
            )
        values: dict[str, Any] = {} if base is None else base._given()
        for name, value in keywords.items():
            if value is None:
                continue
            if name in COLUMNS:
                values[name] = _values(name, value)
            elif name == "error_contains":
                if not isinstance(value, str):
                    raise ArgumentError(f"error_contains: expected a string, got {value!r}")
                values[name] = value
            elif name == "ids":
                values[name] = _ids(value)
            elif name == "where":
                if not callable(value):
                    raise ArgumentError(
                        f"where: expected a function of a StreamEvent, got {value!r}"
                    )
                values[name] = value
        return cls(**values)

    def _given(self) -> dict[str, Any]:
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }

    def keywords(self) -> dict[str, Any]:
        """The keywords given, as `of` takes them (sorted lists for sets): for display."""
        return {k: sorted(v) if isinstance(v, frozenset) else v for k, v in self._given().items()}

    def __bool__(self) -> bool:
        return bool(self._given())

    def describe(self) -> str:
        """One line: ``event_type=webhook.github.push, tenant_id=tenant-001|tenant-002``."""
        parts = []
        for name, value in self.keywords().items():
            if name == "ids":
                text = f"<{len(value)} ids>"
            elif name == "where":
                text = getattr(value, "__name__", "<predicate>")
            elif isinstance(value, list):
                text = "|".join(value)
            else:
                text = repr(value)
            parts.append(f"{name}={text}")
        return ", ".join(parts) or "everything"

    # -- on raw entries ---------------------------------------------------------------------

    def matches(self, entry: FilterableEntry) -> bool:
        """Whether a raw DLQ entry passes (``where`` only when every other test passed)."""
        if self.ids is not None and entry.id not in self.ids:
            return False
        for name in COLUMNS:
            wanted = getattr(self, name)
            if wanted is not None and entry.column(name) not in wanted:
                return False
        if self.error_contains is not None and (
            self.error_contains.casefold() not in entry.column("error").casefold()
        ):
            return False
        return self.where is None or self._where(entry.event(), entry.id)

    def _where(self, event: StreamEvent | None, entry_id: str) -> bool:
        assert self.where is not None
        if event is None:
            return False  # undecodable entries never match a predicate on the event
        try:
            return bool(self.where(event))
        except Exception as exc:
            exc.add_note(f"in the `where` filter, on DLQ entry {entry_id}")
            raise

    # -- on a DLQ frame ---------------------------------------------------------------------

    def apply(self, df: pd.DataFrame) -> pd.DataFrame:
        """The rows of a DLQ frame (`dlq_to_dataframe`, `read_parquet` of its copy) that pass."""
        import pandas as pd

        keep = pd.Series(True, index=df.index)
        if self.ids is not None:
            keep &= df["id"].isin(self.ids)
        for name in COLUMNS:
            wanted = getattr(self, name)
            if wanted is not None:
                keep &= df[name].astype("string").fillna("").isin(wanted)
        if self.error_contains is not None:
            text = df["error"].astype("string").fillna("").str.casefold()
            keep &= text.str.contains(self.error_contains.casefold(), regex=False)
        if self.where is not None:
            keep &= _where_mask(self, df[keep]).reindex(df.index, fill_value=False)
        return df[keep]


# DLQ frame columns that hold no entry field: what the frame derives (the signature, the
# ``payload.<path>`` columns); the builder's own (``id``, ``ts``...) `entry_fields` leaves out.
_DERIVED = "error_signature"
_PATH_PREFIX = "payload."


def check_filter(value: object) -> DLQFilter | None:
    """A ``filters`` argument: None or a `DLQFilter` (`ArgumentError` naming it otherwise)."""
    if value is not None and not isinstance(value, DLQFilter):
        raise ArgumentError(f"filters: expected a DLQFilter (DLQFilter.of(...)), got {value!r}")
    return value


def _where_mask(flt: DLQFilter, df: pd.DataFrame) -> pd.Series:
    """``where`` on each row's event, decoded from the entry the row's columns hold: the
    fields under the names the DLQ entry had (`streamlab.frames._build.entry_fields`, the
    inverse of the frame's naming), so that the event is the one `matches` decodes from the
    raw entry (times to the millisecond a frame keeps)."""
    import pandas as pd

    from streamlab.errors import DecodeError
    from streamlab.events import decode_event
    from streamlab.frames._build import DLQ_FRAME_RENAMES, entry_fields
    from streamlab.records import format_time

    names = [c for c in df.columns if c != _DERIVED and not c.startswith(_PATH_PREFIX)]
    raws = df["_raw"].tolist() if "_raw" in df.columns else [None] * len(df)
    layouts: dict[tuple[str, ...], dict[str, str]] = {}
    out: dict[Any, bool] = {}
    for index, entry_id, raw, row in zip(
        df.index, df["id"].astype(str).tolist(), raws, df[names].itertuples(index=False, name=None),
        strict=True,
    ):  # fmt: skip
        # The exact bytes of fields that did not decode (their column is null).
        exact: dict[str, bytes] = raw if isinstance(raw, dict) else {}
        values = {name: value for name, value in zip(names, row, strict=True) if not pd.isna(value)}
        present = (*values, *(name for name in exact if name not in values))
        layout = layouts.get(present)
        if layout is None:
            layout = layouts[present] = entry_fields(present, DLQ_FRAME_RENAMES)
        fields: dict[str, str | bytes] = {}
        for field, column in layout.items():
            value = exact.get(column, values.get(column, ""))  # no value: an empty one
            if isinstance(value, pd.Timestamp):
                value = format_time(value)
            fields[field] = value if isinstance(value, bytes) else str(value)
        try:
            event = decode_event(fields, entry_id=entry_id)
        except DecodeError:
            event = None
        out[index] = flt._where(event, entry_id)
    return pd.Series(out, dtype=bool)
