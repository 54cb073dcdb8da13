"""Summaries of a DLQ frame: failures by signature (or any columns), and over time."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import pandas as pd
from pandas.tseries.frequencies import to_offset
from pandas.tseries.offsets import BaseOffset

from streamlab import _args
from streamlab.errors import ArgumentError
from streamlab.frames._display import Table

__all__ = ["bucket_for", "check_freq", "dlq_summary", "failures_over_time"]


def _frame(df: object) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise ArgumentError(f"df: expected a DataFrame (dlq_to_dataframe), got {type(df).__name__}")
    return df


def _column(df: pd.DataFrame, name: str, value: object) -> Hashable:
    """``value`` if it names a column of ``df``; else `ArgumentError` listing the columns."""
    try:
        present = value in df.columns
    except TypeError:  # unhashable
        present = False
    if not present:
        raise ArgumentError(
            f"{name}: no column {value!r} in the frame; its columns are {list(df.columns)}"
        )
    return value


def _keys(df: pd.DataFrame, by: object) -> list[Hashable]:
    if isinstance(by, str) or not isinstance(by, Sequence) or not by:
        return [_column(df, "by", by)]
    return [_column(df, "by", key) for key in by]


def _is_time(column: pd.Series) -> bool:
    return bool(pd.api.types.is_datetime64_any_dtype(column))


def _time_column(df: pd.DataFrame, time_column: str | None) -> str:
    if time_column is None:
        time_column = "failed_at" if "failed_at" in df.columns else "ts"
    _column(df, "time_column", time_column)
    if not _is_time(df[time_column]):
        raise ArgumentError(
            f"time_column: column {time_column!r} holds {df[time_column].dtype}, not times; "
            f"time columns of the frame: {[c for c in df.columns if _is_time(df[c])]}"
        )
    return time_column


def dlq_summary(
    df: pd.DataFrame, by: str | Sequence[str] = "error_signature", *, time_column: str | None = None
) -> pd.DataFrame:
    """Dead letters grouped ``by`` one or more columns, the largest group first.

    Columns: the ``by`` columns, ``count``, ``first_failure``, ``last_failure`` (from
    ``failed_at``, else ``ts``), and, when present in ``df`` and not grouped by,
    ``error_type``, ``example_error`` and ``example_id`` (the first dead letter of the group:
    look it up with ``df[df.id == example_id]``). Rows with a null key form their own group.
    A ``by`` or ``time_column`` that is not a column of ``df`` (or not a time column) raises
    `streamlab.errors.ArgumentError` listing the frame's columns.

    The result is a `streamlab.frames.Table`: a DataFrame whose display cuts no cell (a
    signature is shown whole, with the hash that tells two apart), leaves blanks blank and
    keeps stream ids on one line.
    """
    df = _frame(df)
    keys = _keys(df, by)
    time = _time_column(df, time_column)
    aggs: dict[str, tuple[str, str]] = {
        "count": (time, "size"),
        "first_failure": (time, "min"),
        "last_failure": (time, "max"),
    }
    for name, source in (
        ("error_type", "error_type"),
        ("example_error", "error"),
        ("example_id", "id"),
    ):
        if source in df.columns and source not in keys:
            aggs[name] = (source, "first")
    grouped = df.groupby(keys, observed=True, dropna=False, sort=False).agg(**aggs)
    out = grouped.reset_index().sort_values(
        ["count", "last_failure"], ascending=[False, False], kind="stable"
    )
    out["count"] = out["count"].astype("Int64")
    return Table(out.reset_index(drop=True))


# Bucket widths a reader expects on a time axis, smallest first.
_STEPS = (
    "1s", "5s", "10s", "30s", "1min", "5min", "10min", "15min", "30min",
    "1h", "2h", "3h", "6h", "12h", "1D", "2D", "7D", "14D", "30D",
)  # fmt: skip


def bucket_for(span: pd.Timedelta, buckets: int = 40) -> str:
    """The smallest usual bucket width that cuts ``span`` into at most ``buckets`` buckets.

    ``span`` is a duration (a timedelta, seconds, ``"6h"``: `streamlab.durations`).
    """
    width = _args.duration("span", span)
    buckets = _args.count("buckets", buckets, minimum=1)
    for step in _STEPS:
        if width <= pd.Timedelta(step) * buckets:
            return step
    return _STEPS[-1]


def failures_over_time(
    df: pd.DataFrame,
    freq: str | None = None,
    *,
    by: str | None = None,
    time_column: str | None = None,
) -> pd.DataFrame:
    """Failures per time bucket, ready to plot (`plot_failures` draws it readably).

    ``freq`` is a pandas frequency (``"5min"``); without it the bucket is picked from the
    span of the data (`bucket_for`: a few dozen buckets). The index is the bucket start
    (UTC), with empty buckets as 0. Without ``by`` there is one column ``failures``; with
    ``by`` (e.g. ``"error_signature"``) one column per value. ``.attrs["freq"]`` holds the
    bucket width used. Counts are ``Int64``, as every counter (`streamlab.frames.columns`).

    A ``freq`` pandas cannot read (or not > 0), or a ``by`` / ``time_column`` that is not a
    column of ``df``, raises `streamlab.errors.ArgumentError`.
    """
    df = _frame(df)
    time = _time_column(df, time_column)
    if by is not None:
        by = _column(df, "by", by)  # type: ignore[assignment]
    if freq is None:
        times = df[time].dropna()
        freq = bucket_for(times.max() - times.min()) if len(times) else "1h"
    else:
        check_freq(freq)
    if by is None:
        table = df.set_index(time).resample(freq).size().to_frame("failures")
    else:
        grouper = pd.Grouper(key=time, freq=freq)
        table = df.groupby([grouper, by], observed=True).size().unstack(by, fill_value=0)
        if len(table):
            full = pd.date_range(table.index.min(), table.index.max(), freq=freq)
            table = table.reindex(full, fill_value=0)
        table.index.name = time
    table = table.astype("Int64")
    table.attrs["freq"] = freq
    return table


def check_freq(freq: object) -> BaseOffset:
    """``freq`` as pandas reads it (``"5min"``, ``"1h"``, ``"1D"``, ``"MS"``); `ArgumentError`
    naming it when pandas cannot, or when it is not > 0."""
    examples = "a pandas frequency (offset alias) such as '30s', '5min', '1h', '1D' or '7D'"
    if not isinstance(freq, str):
        raise ArgumentError(f"freq: expected {examples}, got {freq!r}")
    try:
        offset = to_offset(freq)
    except ValueError:  # pandas' own parsing decides what an alias is
        raise ArgumentError(f"freq: {freq!r} is not {examples}") from None
    if offset.n <= 0:
        raise ArgumentError(f"freq: must be > 0, got {freq!r}")
    return offset
