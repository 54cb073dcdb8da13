"""A failures-over-time chart an investigator can read (matplotlib, from the notebook extra)."""

from __future__ import annotations

import importlib
import textwrap
from typing import TYPE_CHECKING, Any

import pandas as pd

from streamlab import _args
from streamlab.errors import ArgumentError, MissingDependencyError
from streamlab.frames.summary import check_freq, failures_over_time

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["plot_failures"]

OTHER = "other"


def _matplotlib(module: str) -> Any:
    try:
        return importlib.import_module(f"matplotlib.{module}")
    except ImportError:
        raise MissingDependencyError(
            "plots need matplotlib: pip install 'streamlab[notebook]'"
        ) from None


def plot_failures(
    df: pd.DataFrame,
    freq: str | None = None,
    *,
    by: str | None = None,
    time_column: str | None = None,
    top: int = 8,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Dead letters per time bucket as stacked bars: ``plot_failures(df, by="error_signature")``.

    ``df`` is a DLQ frame (`dlq_to_dataframe`); ``freq``, ``by`` and ``time_column`` are
    `failures_over_time`'s (the bucket is picked from the span when not given; the time is
    ``failed_at``, or e.g. the event's own ``timestamp``). The ``top`` series by count are drawn,
    the rest summed as ``other``; the legend sits outside the axes, labels wrapped, never cut.
    Bars are a bucket wide and the axis spans the data with half a bucket each side, so one
    bucket or a few points still read as a chart. Returns the axes (``ax.figure.savefig``).
    """
    top = _args.count("top", top)
    if freq is not None:
        check_freq(freq)
        try:
            pd.Timedelta(freq)
        except ValueError:  # a month or a week starting on a given day has no one width
            raise ArgumentError(
                f"freq: bars need a fixed width such as '1D' or '7D', not {freq!r}"
            ) from None
    plt, dates, ticker = (_matplotlib(m) for m in ("pyplot", "dates", "ticker"))

    table = failures_over_time(df, freq, by=by, time_column=time_column)
    step = pd.Timedelta(table.attrs["freq"])
    if by is not None and len(table.columns) > top:
        order = table.sum().sort_values(ascending=False).index
        kept = table[order[:top]]
        table = kept.assign(**{OTHER: table[order[top:]].sum(axis=1)})
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 4), layout="constrained")
    assert ax is not None
    starts = pd.DatetimeIndex(table.index).tz_convert("UTC").tz_localize(None)
    width = step / pd.Timedelta(days=1)  # matplotlib's date unit
    bottom = pd.Series(0, index=table.index)
    for column in table.columns:
        values = table[column]
        label = textwrap.fill(str(column), 48) if by is not None else None
        ax.bar(
            starts, values, width=width, bottom=bottom, align="edge", label=label,
            edgecolor="white", linewidth=0.5, color="#b0b0b0" if column == OTHER else None,
        )  # fmt: skip
        bottom = bottom + values
    if len(starts):
        first = float(dates.date2num(starts.min()))
        last = float(dates.date2num(starts.max()))
        ax.set_xlim(first - width / 2, last + width * 1.5)
    locator = dates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(dates.ConciseDateFormatter(locator))
    ax.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_ylabel(f"dead letters per {table.attrs['freq']}")
    ax.set_xlabel("UTC")
    ax.set_title(
        title or f"Dead letters over time{f' by {by}' if by else ''} ({int(bottom.sum())})"
    )
    ax.grid(axis="y", alpha=0.3)
    if by is not None and len(table.columns):
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize="small")
    return ax
