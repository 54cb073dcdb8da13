"""Displays an investigator can read: summaries never cut a signature, blanks are blank and
stream ids do not wrap, in the text and in the notebook (HTML) display."""

from __future__ import annotations

import re

import pandas as pd
from test_replay_helpers import dlq_fields, fill_dlq

from streamlab.client import RedisStreamsClient
from streamlab.events import StreamMessage
from streamlab.frames import Table, dlq_summary, dlq_to_dataframe
from streamlab.replay import replay_dlq, replay_outcome, select_dlq, try_handler

LONG = "TimeoutError: upstream billing-gateway.internal.example.com refused the connection"


def _cells(page: str) -> list[str]:
    return re.findall(r"<td[^>]*>(.*?)</td>", page, flags=re.S)


def _nowrap_columns(page: str) -> list[int]:
    """The (1-based, index first) cell positions the page's style keeps on one line."""
    style = re.search(r"<style>([^<]*white-space: nowrap[^<]*)</style>", page)
    assert style is not None
    return [int(n) for n in re.findall(r"nth-child\((\d+)\)", style.group(1))]


def test_dlq_summary_shows_whole_signatures_and_blank_blanks(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    dlq = streams_client.dlq_stream(stream_name)
    fill_dlq(streams_client.redis, dlq, [dlq_fields(i, stream_name, error=LONG) for i in range(3)])
    df = dlq_to_dataframe(streams_client, stream_name)
    summary = dlq_summary(df)
    signature = summary["error_signature"][0]
    assert len(signature) > 50  # longer than pandas' display.max_colwidth
    assert isinstance(summary, Table)
    assert isinstance(summary.head(1), Table)  # derived frames keep the display
    pd.testing.assert_frame_equal(summary, pd.DataFrame(summary))  # a DataFrame otherwise

    assert signature in repr(summary)
    page = summary._repr_html_()
    assert page is not None
    assert signature in page
    assert pd.DataFrame(summary)._repr_html_().count(signature) == 0  # plain pandas cuts it
    # The example id stays on one line: its column is in the nowrap style.
    position = list(summary.columns).index("example_id") + 2
    assert position in _nowrap_columns(page)


def test_try_handler_and_outcome_tables_leave_blanks_blank(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    dlq = streams_client.dlq_stream(stream_name)
    ids = fill_dlq(streams_client.redis, dlq, [dlq_fields(i, stream_name) for i in range(4)])

    def handler(msg: StreamMessage) -> None:
        if msg.event is not None and msg.event.payload["n"] == 1:
            raise KeyError("still broken")

    selection = select_dlq(streams_client, stream_name)
    trial = try_handler(handler, selection)
    assert trial["error"].isna().sum() == 3
    report = replay_dlq(streams_client, stream_name, selection)
    outcome = replay_outcome(streams_client, stream_name, report.replay_id)
    assert outcome["consumer"].isna().all()  # nobody read them yet: no consumer, no error
    for table in (trial, outcome, report.to_dataframe(), selection.to_dataframe()):
        assert isinstance(table, Table)
        page = table._repr_html_()
        assert page is not None
        cells = _cells(page)
        assert cells, type(table)
        for blank in ("None", "nan", "NaN", "&lt;NA&gt;", "NaT"):
            assert blank not in cells, (blank, list(table.columns))
        if table.isna().any(axis=None):
            assert "" in cells  # the blanks are there, empty
        assert 2 in _nowrap_columns(page)  # `id` is the first column: child 2 after the index
        text = repr(table)
        assert "None" not in text
        assert "<NA>" not in text
        assert "NaN" not in text
    assert ids[1] in _cells(trial._repr_html_() or "")


def test_report_html_keeps_ids_on_one_line(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    dlq = streams_client.dlq_stream(stream_name)
    ids = fill_dlq(streams_client.redis, dlq, [dlq_fields(i, stream_name) for i in range(3)])
    report = replay_dlq(streams_client, stream_name, dry_run=True)
    page = report._repr_html_()
    for entry_id in ids:
        assert f"<span style='white-space:nowrap'>{entry_id}</span>" in page
    assert "nan" not in page.casefold()
    assert "None" not in page
