"""Shared helpers of the replay tests (no tests here): fill a DLQ quickly with realistic entries."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import redis

from streamlab.events import StreamEvent, encode_event
from streamlab.records import Failure, MarkerStamp, ReplayMarker


def dlq_fields(
    i: int,
    source: str,
    *,
    event_type: str = "webhook.github.push",
    tenant: str = "tenant-001",
    repository: str = "acme/api",
    error_type: str = "TimeoutError",
    error: str = "upstream timed out",
    group: str = "g",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Original fields of an event (retry_count 3) plus its failure record."""
    event = StreamEvent(
        id=f"evt-{i}",
        event_type=event_type,
        repository=repository,
        tenant_id=tenant,
        payload={"n": i, "text": "héllo"},
        retry_count=3,
    )
    fields: dict[str, Any] = dict(encode_event(event))
    fields.update(extra or {})
    failure = Failure(
        error=error,
        error_type=error_type,
        attempts=4,
        source_stream=source,
        source_id=f"{1000 + i}-0",
        group=group,
        consumer="worker-1",
    )
    fields.update(failure.to_fields())
    return fields


def fill_dlq(r: redis.Redis, dlq: str, entries: list[dict[str, Any]]) -> list[str]:
    """XADD the entries to ``dlq`` in one pipeline; return their ids."""
    pipe = r.pipeline(transaction=False)
    for fields in entries:
        pipe.xadd(dlq, fields)
    return [i.decode() for i in pipe.execute()]


def test_a_marker_stamp_is_the_replay_markers_fields_flattened() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    run = "5f0c3a52-8a8e-4c59-9d62-0bd3f1d2b0a7"
    stamp = MarkerStamp(run, at)
    for group in ("", "billing", "grüppe"):
        marker = ReplayMarker(run, "1700000000000-3", 2, at, group)
        flat = [x.encode() for kv in marker.to_fields().items() for x in kv]
        assert stamp.fields("1700000000000-3", 2, group.encode()) == flat
        back = ReplayMarker.from_fields(dict(zip(flat[::2], flat[1::2], strict=True)))
        assert back == marker
