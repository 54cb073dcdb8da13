"""Summaries of a DLQ frame: failures by signature (or any columns), and over time."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from streamlab.frames._display import Table

__all__ = ["bucket_for", "dlq_summary", "failures_over_time"]


def _keys(by: str | Sequence[str]) -> list[str]:
    return [by] if isinstance(by, str) else list(by)


def _time_column(df: pd.DataFrame, time_column: str | None) -> str:
    if time_column is not None:
        return time_column
    return "failed_at" if "failed_at" in df.columns else "ts"


def dlq_summary(
    df: pd.DataFrame, by: str | Sequence[str] = "error_signature", *, time_column: str | None = None
) -> pd.DataFrame:
    """Dead letters grouped ``by`` one or more columns, the largest group first.

    Columns: the ``by`` columns, ``count``, ``first_failure``, ``last_failure`` (from
    ``failed_at``, else ``ts``), and, when present in ``df`` and not grouped by,
    ``error_type``, ``example_error`` and ``example_id`` (the first dead letter of the group:
    look it up with ``df[df.id == example_id]``). Rows with a null key form their own group.

    The result is a `streamlab.frames.Table`: a DataFrame whose display cuts no cell (a
    signature is shown whole, with the hash that tells two apart), leaves blanks blank and
    keeps stream ids on one line.
    """
    keys = _keys(by)
    missing = [k for k in keys if k not in df.columns]
    if missing:
        raise KeyError(
            f"dlq_summary: no column {missing} in the frame (columns: {list(df.columns)})"
        )
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
    """The smallest usual bucket width that cuts ``span`` into at most ``buckets`` buckets."""
    for step in _STEPS:
        if span <= pd.Timedelta(step) * buckets:
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
    bucket width used.
    """
    time = _time_column(df, time_column)
    if freq is None:
        times = df[time].dropna()
        freq = bucket_for(times.max() - times.min()) if len(times) else "1h"
    if by is None:
        table = df.set_index(time).resample(freq).size().to_frame("failures")
    else:
        grouper = pd.Grouper(key=time, freq=freq)
        table = df.groupby([grouper, by], observed=True).size().unstack(by, fill_value=0)
        if len(table):
            full = pd.date_range(table.index.min(), table.index.max(), freq=freq)
            table = table.reindex(full, fill_value=0)
        table.index.name = time
    table.attrs["freq"] = freq
    return table
