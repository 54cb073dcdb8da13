"""Failures over time: the bucket follows the span, and the chart reads for one bucket, many
series and a few points (rendered to PNG with matplotlib's Agg backend)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

from streamlab.frames import bucket_for, failures_over_time, plot_failures

matplotlib.use("Agg")
T0 = datetime(2026, 11, 30, 14, 0, tzinfo=UTC)


def dlq(times: list[datetime], signatures: list[str] | None = None) -> pd.DataFrame:
    df = pd.DataFrame({"failed_at": pd.to_datetime(times, utc=True).astype("datetime64[ms, UTC]")})
    df["error_signature"] = pd.Categorical(signatures or ["KeyError: 'x' [a3c95392]"] * len(times))
    return df


@pytest.mark.parametrize(
    ("span", "bucket"),
    [
        (timedelta(0), "1s"),
        (timedelta(seconds=90), "5s"),
        (timedelta(minutes=3), "5s"),
        (timedelta(hours=1), "5min"),
        (timedelta(days=1), "1h"),
        (timedelta(days=30), "1D"),
        (timedelta(days=3650), "30D"),
    ],
)
def test_bucket_follows_the_span(span: timedelta, bucket: str) -> None:
    assert bucket_for(pd.Timedelta(span)) == bucket


def test_failures_over_time_picks_a_few_dozen_buckets() -> None:
    # Ten minutes of failures: the README's old "5min" put them all in two or three buckets.
    times = [T0 + timedelta(seconds=7 * i) for i in range(90)]
    table = failures_over_time(dlq(times), by="error_signature")
    assert table.attrs["freq"] == "30s"
    assert 10 <= len(table) <= 40
    assert int(table.to_numpy().sum()) == 90
    assert list(failures_over_time(dlq(times)).columns) == ["failures"]
    assert failures_over_time(dlq(times), "1h").attrs["freq"] == "1h"


def _bars(ax: object) -> list[object]:
    return list(ax.patches)  # type: ignore[attr-defined]


def test_one_bucket_draws_one_bar_on_a_sensible_axis(tmp_path: Path) -> None:
    ax = plot_failures(dlq([T0] * 12), "1h")
    (bar,) = _bars(ax)
    assert bar.get_height() == 12  # type: ignore[attr-defined]
    low, high = ax.get_xlim()
    assert high - low == pytest.approx(2 / 24)  # two buckets wide (days), not years
    ax.figure.savefig(tmp_path / "one.png")


def test_many_series_keep_the_legend_outside_and_fold_the_rest(tmp_path: Path) -> None:
    signatures = [
        f"ValueError: failure kind {chr(65 + i % 12)} of a long text [{i % 12:08x}]"
        for i in range(240)
    ]
    times = [T0 + timedelta(seconds=15 * i) for i in range(240)]
    ax = plot_failures(dlq(times, signatures), by="error_signature", top=5)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(labels) == 6
    assert labels[-1] == "other"
    assert all("[" in label for label in labels[:-1])  # wrapped, never cut: the hash is there
    ax.figure.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1  # outside the axes, not over the bars
    ax.figure.savefig(tmp_path / "many.png", bbox_inches="tight")


def test_a_few_points_far_apart(tmp_path: Path) -> None:
    ax = plot_failures(dlq([T0, T0 + timedelta(minutes=7), T0 + timedelta(hours=2)]))
    assert sum(bar.get_height() for bar in _bars(ax)) == 3  # type: ignore[attr-defined]
    assert ax.get_ylabel() == "dead letters per 5min"
    ax.figure.savefig(tmp_path / "few.png")
