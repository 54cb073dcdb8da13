"""One filter vocabulary: `DLQFilter` on raw DLQ entries (select_dlq) and on the DLQ frame
(`DLQFilter.apply`) chooses the same entries, for every keyword, alone and combined."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pandas as pd
import pytest

from streamlab.client import RedisStreamsClient
from streamlab.consumer import Consumer, ConsumerConfig
from streamlab.errors import ArgumentError, Reject
from streamlab.events import StreamEvent, StreamMessage, decode_event
from streamlab.filters import KEYWORDS, DLQFilter
from streamlab.frames import dlq_to_dataframe, stream_to_dataframe
from streamlab.incident import seed_incident
from streamlab.records import FIELD_ALIASES
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


# -- one alias rule: streamlab's own name wins over an alias, everywhere ------------------------

# An own name's frame column (`id` is the stream id: the event id is `event_id`) and the filter
# keyword that matches it (None: no keyword, only `where`).
_COLUMN = {"id": "event_id", "repository": "repository", "tenant_id": "tenant_id"}
_KEYWORD = {"id": None, "repository": "repository", "tenant_id": "tenant_id"}


def _reject(msg: StreamMessage) -> None:
    raise Reject("dead-lettered for the test")


def _dead_letter(client: RedisStreamsClient, stream: str, entries: list[dict[str, str]]) -> None:
    for fields in entries:
        client.redis.xadd(stream, fields)
    config = ConsumerConfig(stream=stream, group="g", claim_min_idle=timedelta(seconds=5))
    Consumer(client, config).run(_reject, burst=True, handle_signals=False)


def _text(value: Any) -> str | None:
    """A frame cell or an event attribute as comparable text ('' and NA are both None)."""
    return None if value is None or pd.isna(value) or value == "" else value


def _assert_all_agree(
    client: RedisStreamsClient, stream: str, own: str, expected: list[str | None]
) -> None:
    """decode_event, both frames, the selection's frame and every filter read field ``own``
    of each entry (dead-lettered in order) as ``expected`` says."""
    attribute, column, keyword = own, _COLUMN[own], _KEYWORD[own]
    source = client.redis.xrange(stream)
    dlq_name = client.dlq_stream(stream)
    dead = client.redis.xrange(dlq_name)
    assert len(source) == len(dead) == len(expected)

    decoded = [_text(getattr(decode_event(f, entry_id=i.decode()), attribute)) for i, f in dead]
    frame = dlq_to_dataframe(client, stream)
    selection = select_dlq(client, stream)
    assert decoded == expected, "decode_event"
    assert [_text(v) for v in frame[column].astype(object)] == expected, "dlq_to_dataframe"
    assert [_text(v) for v in selection.to_dataframe()[column].astype(object)] == expected
    assert [_text(getattr(m.event, attribute)) for m in selection] == expected, "select_dlq"
    # The source stream's frame too (the same builder, without the failure fields).
    stream_frame = stream_to_dataframe(client, stream)
    assert [_text(v) for v in stream_frame[column].astype(object)] == expected

    ids = frame["id"].tolist()
    for value in sorted({v for v in expected if v is not None}):
        wanted = [i for i, v in zip(ids, expected, strict=True) if v == value]
        filters: list[dict[str, Any]] = [{"where": lambda e, v=value: getattr(e, attribute) == v}]
        if keyword is not None:
            filters.append({keyword: value})
        for keywords in filters:
            assert select_dlq(client, stream, **keywords).ids == wanted, (keywords, value)
            assert DLQFilter.of(**keywords).apply(frame)["id"].tolist() == wanted, keywords


@pytest.mark.parametrize(("alias", "own"), FIELD_ALIASES.items())
def test_decoders_and_filters_agree_on_an_own_name_next_to_its_alias(
    streams_client: RedisStreamsClient, stream_name: str, alias: str, own: str
) -> None:
    auth = json.dumps({"tenant_id": "in-auth"})
    entries = [
        {"event_type": "t", alias: "via-alias", own: "via-own"},  # the alias written first
        {"event_type": "t", own: "via-own", alias: "via-alias"},  # the own name first
        {"event_type": "t", alias: "alias-only"},
        {"event_type": "t", own: "", alias: "via-alias", "auth_context": auth},  # own, empty
        {"event_type": "t", own: "own-only", "auth_context": auth},
    ]
    _dead_letter(streams_client, stream_name, entries)
    # An empty own name still wins; a tenant then comes from auth_context, never the alias.
    empty = "in-auth" if own == "tenant_id" else None
    expected = ["via-own", "via-own", "alias-only", empty, "own-only"]
    _assert_all_agree(streams_client, stream_name, own, expected)

    # The alias that lost is kept under its own name: in the event's extra, in a frame column.
    frame = dlq_to_dataframe(streams_client, stream_name)
    kept = f"{alias}_field" if alias in _COLUMN.values() else alias  # `event_id` is taken
    assert frame[kept].tolist()[:2] == ["via-alias", "via-alias"]
    assert f"{own}_field" not in frame.columns
    for message in list(select_dlq(streams_client, stream_name))[:2]:
        assert message.event is not None
        assert message.event.extra[alias] == "via-alias"


def test_two_aliases_of_one_field_are_read_in_the_table_s_order(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    first, second = (a for a, own in FIELD_ALIASES.items() if own == "repository")
    entries = [
        {"event_type": "t", second: "second", first: "first"},
        {"event_type": "t", first: "first", second: "second"},
        {"event_type": "t", second: "second", first: "first", "repository": "own"},
    ]
    _dead_letter(streams_client, stream_name, entries)
    _assert_all_agree(streams_client, stream_name, "repository", ["first", "first", "own"])


# -- `where` on a frame row sees the event the raw entry decodes to -----------------------------

_FAILURE = {
    "dlq_error": "boom",
    "dlq_error_type": "ValueError",
    # Not empty: a frame holds an empty value as null, as if the field were absent.
    "dlq_traceback": "Traceback (most recent call last): ...",
    "dlq_attempts": "3",
    "dlq_source_stream": "s",
    "dlq_source_id": "1-0",
    "dlq_group": "g",
    "dlq_consumer": "c",
    # Times to the millisecond: a frame keeps no finer ones.
    "dlq_failed_at": "2024-05-01T12:00:00.123000Z",
}
_AUTH = json.dumps({"tenant_id": "in-auth"})
# Entries whose fields lose their names in the frame: to an alias, a rename, a reserved column.
_RENAMED: list[dict[str, str]] = [
    {"id": "own-id", "event_id": "alias-id"},
    {"event_id": "alias-id", "id": "own-id"},
    {"id": "", "event_id": "alias-id"},  # the own name, empty, still wins
    {"event_id": "alias-only"},
    {"repository": "acme/own", "repo_name": "acme/alias"},
    {"repository": "", "repo_name": "acme/alias"},
    {"repo_name": "acme/alias", "repo": "acme/second"},
    {"repo_name": "", "repo": "acme/second"},
    {"tenant_id": "", "tenant": "t-alias", "auth_context": _AUTH},
    {"tenant": "t-alias"},
    # `ts` is the frame's own; `group`, `error`... the failure's: these become `*_field`.
    {"ts": "event-ts", "group": "event-group", "error": "event-error", "attempts": "x"},
    {"note_field": "a field of that name", "repository_field": "one too", "repository": "r"},
    {"timestamp": "2024-05-01T11:00:00.456000Z", "retry_count": "2", "payload": '{"a": 1}'},
]


def _seen(events: list[StreamEvent]) -> Callable[[StreamEvent], bool]:
    def where(event: StreamEvent) -> bool:
        events.append(event)
        return True

    return where


def test_where_sees_the_same_event_in_a_frame_row_as_in_the_raw_entry(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    dlq = streams_client.dlq_stream(stream_name)
    for fields in _RENAMED:
        streams_client.redis.xadd(dlq, {"event_type": "t", **fields, **_FAILURE})
    frame = dlq_to_dataframe(streams_client, stream_name)
    assert {"event_id_field", "ts_field", "group_field", "error_field"} <= set(frame.columns)

    raw: list[StreamEvent] = []
    rows: list[StreamEvent] = []
    assert len(select_dlq(streams_client, stream_name, where=_seen(raw))) == len(_RENAMED)
    assert len(DLQFilter.of(where=_seen(rows)).apply(frame)) == len(_RENAMED)
    assert len(raw) == len(rows) == len(_RENAMED)
    for i, (from_row, from_entry) in enumerate(zip(rows, raw, strict=True)):
        assert from_row == from_entry, (i, _RENAMED[i])
    assert raw[0].extra["event_id"] == "alias-id"
    assert raw[10].extra["group"] == "event-group"
    assert raw[10].extra["dlq_group"] == "g"


@pytest.mark.parametrize(
    "where",
    [
        lambda e: "event_id" in e.extra,
        lambda e: e.id in ("alias-only", ""),
        lambda e: e.repository == "acme/alias",
        lambda e: e.extra.get("repo_name") == "acme/alias",
        lambda e: "repo" in e.extra,
        lambda e: e.tenant_id == "t-alias",
        lambda e: e.extra.get("ts") == "event-ts" and e.extra.get("error") == "event-error",
        lambda e: "note_field" in e.extra and "repository_field" in e.extra,
        lambda e: e.extra.get("dlq_group") == "g" and "group" not in e.extra,
    ],
)
def test_where_selects_the_same_ids_from_a_frame_as_from_the_entries(
    streams_client: RedisStreamsClient, stream_name: str, where: Callable[[StreamEvent], bool]
) -> None:
    # Dead-lettered by a real consumer (its own failure record, times to the microsecond).
    _dead_letter(streams_client, stream_name, [{"event_type": "t", **f} for f in _RENAMED])
    frame = dlq_to_dataframe(streams_client, stream_name)
    selected = select_dlq(streams_client, stream_name, where=where).ids
    assert 0 < len(selected) < len(frame)
    assert DLQFilter.of(where=where).apply(frame)["id"].tolist() == selected
