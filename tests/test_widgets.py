"""The DLQ browser, headless: its methods and its buttons against a real server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import ipywidgets as w
import pytest

from streamlab.client import RedisStreamsClient
from streamlab.errors import NotFoundError
from streamlab.frames import dlq_to_dataframe
from streamlab.incident import BUG_TENANT, seed_incident
from streamlab.replay import select_dlq
from streamlab.widgets import DLQBrowser


@pytest.fixture
def browser(streams_client: RedisStreamsClient, stream_name: str) -> DLQBrowser:
    seed_incident(streams_client, stream_name, events=1200)
    return DLQBrowser(streams_client, stream_name, page_size=10)


def walk(widget: Any) -> Iterator[Any]:
    yield widget
    for child in getattr(widget, "children", ()):
        yield from walk(child)


def button(browser: DLQBrowser, description: str) -> w.Button:
    (found,) = [
        x for x in walk(browser.widget) if isinstance(x, w.Button) and x.description == description
    ]
    return found


def test_filter_select_dry_run_and_replay(
    browser: DLQBrowser, streams_client: RedisStreamsClient
) -> None:
    r, stream, dlq = streams_client.redis, browser.stream, browser.dlq
    everything = len(browser.frame)
    assert everything == r.xlen(dlq) > 0
    browser.filter(tenant_id=BUG_TENANT, error_type="LookupError")
    shown = browser.frame
    assert (
        shown["id"].tolist()
        == select_dlq(streams_client, stream, tenant_id=BUG_TENANT, error_type="LookupError").ids
    )
    assert set(shown["tenant_id"].astype(str)) == {BUG_TENANT}
    assert browser.selected == shown["id"].tolist()
    assert browser.filter() is browser
    assert len(browser.frame) == everything  # cleared

    browser.filter(error_type="LookupError")
    chosen = browser.frame["id"].tolist()[:3]
    browser.select(chosen)
    assert browser.selected == chosen
    dry = browser.dry_run()
    assert dry.dry_run
    assert dry.selected == chosen
    assert len(dry.replayed) == 3
    assert r.xlen(dlq) == everything  # nothing written

    before = r.xlen(stream)
    report = browser.replay(confirm=True)
    assert sorted(report.replayed) == sorted(chosen)
    assert r.xlen(dlq) == everything - 3
    assert r.xlen(stream) == before + 3
    assert not set(chosen) & set(dlq_to_dataframe(streams_client, stream)["id"])
    assert len(browser.frame) == len(select_dlq(streams_client, stream, error_type="LookupError"))
    with pytest.raises(ValueError, match="confirm=True"):
        browser.replay()


def test_detail_gives_payload_traceback_and_failure(browser: DLQBrowser) -> None:
    dlq_id = browser.frame["id"].iloc[0]
    info = browser.detail(dlq_id)
    assert isinstance(info["payload"], dict)
    assert "repository" in info["payload"]
    assert "Traceback" in info["traceback"]
    assert info["failure"]["error_type"] in {"LookupError", "UpstreamTimeout"}
    assert info["failure"]["error_signature"].startswith(info["failure"]["error_type"])
    assert info["raw"]["event_type"].startswith("webhook.github.")
    with pytest.raises(NotFoundError, match="has no entry '1-1'"):
        browser.detail("1-1")
    with pytest.raises(NotFoundError, match="not among"):
        browser.select(["1-1"])


def test_buttons_call_the_same_logic(
    browser: DLQBrowser, streams_client: RedisStreamsClient
) -> None:
    dropdowns = {x.description: x for x in walk(browser.widget) if isinstance(x, w.Dropdown)}
    # Choices come from the data, most frequent first.
    assert BUG_TENANT in dropdowns["tenant_id"].options
    assert dropdowns["error_type"].options[0] == "(any)"
    dropdowns["tenant_id"].value = BUG_TENANT
    button(browser, "Apply filter").click()
    assert set(browser.frame["tenant_id"].astype(str)) == {BUG_TENANT}
    status = [
        x for x in walk(browser.widget) if isinstance(x, w.HTML) and "dead letters shown" in x.value
    ]
    assert f"tenant_id={BUG_TENANT}" in status[0].value

    # Paging: ten rows a page, the entry picker follows the page, the detail shows the payload.
    picker = dropdowns["entry"]
    first_page = list(picker.options)
    assert len(first_page) == min(10, len(browser.frame))
    button(browser, "next ▶").click()
    assert browser.page == 1
    assert list(picker.options) != first_page
    picker.value = picker.options[0]
    detail = [
        x for x in walk(browser.widget) if isinstance(x, w.HTML) and "<b>payload</b>" in x.value
    ]
    assert detail
    assert "traceback" in detail[0].value

    # A bad bound says so in the widget instead of raising out of a button.
    since = next(
        x for x in walk(browser.widget) if isinstance(x, w.Text) and x.description == "since"
    )
    since.value = "yesterday"
    button(browser, "Apply filter").click()
    assert "neither a stream id" in status[0].value
    since.value = ""

    # Replay asks first; "Yes, replay" replays what the filter shows.
    dlq_before = streams_client.redis.xlen(browser.dlq)
    shown = len(browser.frame)
    button(browser, "Replay…").click()
    confirm = next(
        x
        for x in walk(browser.widget)
        if isinstance(x, w.HBox)
        and any(getattr(c, "description", "") == "Yes, replay" for c in x.children)
    )
    assert confirm.layout.display == "flex"
    assert streams_client.redis.xlen(browser.dlq) == dlq_before  # nothing yet
    button(browser, "Yes, replay").click()
    assert streams_client.redis.xlen(browser.dlq) == dlq_before - shown
    assert browser.last_report is not None
    assert len(browser.last_report.replayed) == shown


def test_import_without_ipywidgets_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['ipywidgets'] = None\n"
        "try:\n    import streamlab.widgets\n"
        "except ImportError as exc:\n    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "MissingDependencyError" in out.stdout
    assert "pip install 'streamlab[notebook]'" in out.stdout
