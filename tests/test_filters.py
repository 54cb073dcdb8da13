"""One filter vocabulary: `DLQFilter` on raw DLQ entries (select_dlq) and on the DLQ frame
(`DLQFilter.apply`) chooses the same entries, for every keyword, alone and combined."""

from __future__ import annotations

from typing import Any

import pytest

from streamlab.client import RedisStreamsClient
from streamlab.errors import ArgumentError
from streamlab.filters import KEYWORDS, DLQFilter
from streamlab.frames import dlq_to_dataframe
from streamlab.incident import seed_incident
from streamlab.replay import select_dlq

CASES: list[dict[str, Any]] = [
    {},
    {"event_type": "webhook.github.pull_request"},
    {"event_type": ["webhook.github.push", "webhook.github.issues"]},
    {"tenant_id": "tenant-003"},
    {"repository": ["initech/api", "acme/web"]},
    {"error_type": "UpstreamTimeout"},
    {"error_signature": "LookupError: no token for installation <n> [e405bbee]"},
    {"error_contains": "TIMED OUT"},
    {"where": lambda event: event.payload["sender"]["login"] == "octocat"},
    {"tenant_id": "tenant-003", "event_type": "webhook.github.pull_request"},
    {
        "error_type": ["UpstreamTimeout", "LookupError"],
        "where": lambda e: e.tenant_id != "tenant-003",
    },
]


@pytest.fixture
def incident(streams_client: RedisStreamsClient, stream_name: str) -> str:
    seed_incident(streams_client, stream_name, events=1500)
    return stream_name


@pytest.mark.parametrize("keywords", CASES, ids=lambda k: ",".join(k) or "none")
def test_frame_and_entries_agree(
    streams_client: RedisStreamsClient, incident: str, keywords: dict[str, Any]
) -> None:
    frame = dlq_to_dataframe(streams_client, incident)
    if "error_signature" in keywords:  # the signature the frame computes, verbatim
        assert keywords["error_signature"] in set(frame["error_signature"].astype(str))
    selected = select_dlq(streams_client, incident, **keywords)
    applied = DLQFilter.of(**keywords).apply(frame)
    assert selected.ids == applied["id"].tolist()
    if keywords:
        assert 0 < len(selected) < len(frame), "each case keeps some rows and drops some"


def test_ids_of_a_filtered_frame_select_the_same_rows(
    streams_client: RedisStreamsClient, incident: str
) -> None:
    frame = dlq_to_dataframe(streams_client, incident)
    outage = frame[frame["error_type"] == "UpstreamTimeout"]
    assert select_dlq(streams_client, incident, ids=outage["id"]).ids == outage["id"].tolist()
    both = DLQFilter.of(ids=outage["id"], tenant_id="tenant-001")
    assert both.apply(frame)["id"].tolist() == select_dlq(streams_client, incident, both).ids


def test_keywords_describe_and_errors() -> None:
    flt = DLQFilter.of(tenant_id=["t2", "t1"], event_type="push", error_contains="x")
    assert flt.keywords() == {
        "event_type": ["push"],
        "tenant_id": ["t1", "t2"],
        "error_contains": "x",
    }
    assert flt.describe() == "event_type=push, tenant_id=t1|t2, error_contains='x'"
    assert DLQFilter.of(flt, tenant_id=None, repository="a/b").repository == frozenset({"a/b"})
    assert not DLQFilter.of()
    assert DLQFilter.of().describe() == "everything"
    assert set(KEYWORDS) >= {"event_type", "tenant_id", "repository", "error_type", "ids"}
    with pytest.raises(TypeError, match="unknown filter tenants; filters are event_type"):
        DLQFilter.of(tenants="t1")
    with pytest.raises(ArgumentError, match="ids: 'x' is not a stream id"):
        DLQFilter.of(ids=["x"])
    with pytest.raises(ArgumentError, match="event_type: expected a string or a list"):
        DLQFilter.of(event_type=3)
    with pytest.raises(ArgumentError, match="where: expected a function"):
        DLQFilter.of(where="x")


def test_select_dlq_reads_a_named_dlq(streams_client: RedisStreamsClient, stream_name: str) -> None:
    other = f"{stream_name}:archive"
    streams_client.redis.xadd(other, {"event_type": "a", "dlq_error_type": "E", "dlq_error": "e"})
    assert select_dlq(streams_client, stream_name).ids == []
    sel = select_dlq(streams_client, stream_name, dlq=other)
    assert len(sel) == 1
    assert sel.dlq == other
