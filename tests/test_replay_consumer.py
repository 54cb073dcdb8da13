"""Replay with real Consumers: fail, dead-letter, try the fix, replay, consume, follow up."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from test_replay_helpers import dlq_fields, fill_dlq

from streamlab.client import RedisStreamsClient
from streamlab.consumer import Consumer, ConsumerConfig, RunStats
from streamlab.events import StreamEvent, StreamMessage
from streamlab.replay import replay_dlq, replay_outcome, select_dlq, try_handler


def consumer(client: RedisStreamsClient, stream: str, group: str) -> Consumer:
    config = ConsumerConfig(
        stream=stream,
        group=group,
        consumer=f"{group}-worker",
        block_duration=timedelta(milliseconds=50),
        max_retries=0,
    )
    return Consumer(client, config)


def wait_for(condition: Callable[[], Any], timeout: float = 30) -> None:
    """Poll until ``condition()`` is true; a generous limit for a stuck run, not a speed test."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def broken(msg: StreamMessage) -> None:
    assert msg.event is not None
    if msg.event.payload["n"] % 2:
        raise ConnectionError(f"billing API down for {msg.event.id}")


def test_dead_letters_replayed_and_acked_by_a_running_consumer(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    r = streams_client.redis
    events = [StreamEvent(id=f"evt-{n}", event_type="push", payload={"n": n}) for n in range(10)]
    streams_client.add_many(stream_name, events)
    audit_seen: list[str] = []
    audit = consumer(streams_client, stream_name, "audit")
    audit.run(lambda m: audit_seen.append(m.id), burst=True, handle_signals=False)
    assert len(audit_seen) == 10

    stats = consumer(streams_client, stream_name, "billing").run(
        broken, burst=True, handle_signals=False
    )
    assert stats.dead_lettered == 5
    sel = select_dlq(streams_client, stream_name, error_type="ConnectionError")
    assert len(sel) == 5
    assert {m.failure.group for m in sel if m.failure} == {"billing"}

    assert try_handler(broken, sel)["outcome"].tolist() == ["error"] * 5
    handled: list[StreamMessage] = []
    assert try_handler(handled.append, sel)["outcome"].tolist() == ["ok"] * 5
    handled.clear()

    report = replay_dlq(streams_client, stream_name, sel)
    assert len(report.replayed) == 5
    assert r.xlen(streams_client.dlq_stream(stream_name)) == 0

    stats = consumer(streams_client, stream_name, "billing").run(
        handled.append, burst=True, handle_signals=False
    )
    assert stats.acked == 5
    assert sorted(m.event.id for m in handled if m.event) == [f"evt-{n}" for n in (1, 3, 5, 7, 9)]
    assert all(m.event is not None and m.event.retry_count == 0 for m in handled)
    assert {m.id for m in handled} == set(report.mapping.values())

    # The audit group already handled these events: it acks and skips the replays.
    audit_seen.clear()
    stats = audit.run(lambda m: audit_seen.append(m.id), burst=True, handle_signals=False)
    assert audit_seen == []
    assert stats.skipped == 5
    assert r.xpending(stream_name, "audit")["pending"] == 0

    outcome = replay_outcome(streams_client, stream_name, report.replay_id)
    assert outcome["group"].tolist() == ["billing"] * 5
    assert outcome["state"].tolist() == ["acked"] * 5


def test_replayed_events_taken_and_acked_by_a_consumer_already_running(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    r = streams_client.redis
    dlq = streams_client.dlq_stream(stream_name)
    ids = fill_dlq(r, dlq, [dlq_fields(i, stream_name, group="billing") for i in range(300)])
    handled: list[StreamMessage] = []
    stop = threading.Event()
    runs: list[RunStats] = []
    worker = consumer(streams_client, stream_name, "billing")
    thread = threading.Thread(
        target=lambda: runs.append(
            worker.run(handled.append, handle_signals=False, stop_event=stop)
        )
    )
    thread.start()
    try:
        wait_for(lambda: r.exists(stream_name) and r.xinfo_groups(stream_name))
        # Paced (~0.3 s), so the consumer takes events while the replay is still injecting.
        report = replay_dlq(streams_client, stream_name, rate=1000)
        assert report.replayed == ids
        wait_for(lambda: len(handled) >= len(ids))
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    [stats] = runs
    assert stats.acked == stats.handled == len(ids)
    assert stats.dead_lettered == stats.failed == 0
    event_ids = Counter(m.event.id for m in handled if m.event)
    assert event_ids == Counter(f"evt-{i}" for i in range(300))  # each once
    assert {m.id for m in handled} == set(report.mapping.values())
    assert all(m.event is not None and m.event.retry_count == 0 for m in handled)
    assert r.xpending(stream_name, "billing")["pending"] == 0
    assert r.xlen(dlq) == 0
    outcome = replay_outcome(streams_client, stream_name, report.replay_id)
    assert outcome["state"].tolist() == ["acked"] * len(ids)


def test_outcome_shows_an_event_a_real_consumer_dead_letters_again(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    events = [StreamEvent(id=f"evt-{n}", event_type="push", payload={"n": n}) for n in range(6)]
    streams_client.add_many(stream_name, events)
    stats = consumer(streams_client, stream_name, "billing").run(
        broken, burst=True, handle_signals=False
    )
    assert stats.dead_lettered == 3
    report = replay_dlq(streams_client, stream_name)
    assert len(report.replayed) == 3

    def half_fixed(msg: StreamMessage) -> None:
        assert msg.event is not None
        if msg.event.payload["n"] == 3:
            raise KeyError("release_notes")

    stats = consumer(streams_client, stream_name, "billing").run(
        half_fixed, burst=True, handle_signals=False
    )
    assert (stats.acked, stats.dead_lettered) == (2, 1)
    [again] = streams_client.read_dlq(stream_name)  # written by the consumer, not by hand

    outcome = replay_outcome(streams_client, stream_name, report.replay_id).set_index("id")
    event_of = {
        f[b"streamlab:replay_of"].decode(): f[b"id"].decode()
        for _, f in streams_client.redis.xrange(stream_name)
        if b"streamlab:replay_of" in f
    }
    states = {event_of[i]: state for i, state in outcome["state"].items()}
    assert states == {"evt-1": "acked", "evt-3": "dead_lettered", "evt-5": "acked"}
    failed = outcome.loc[again.fields["streamlab:replay_of"].decode()]
    assert event_of[failed.name] == "evt-3"
    assert failed["group"] == "billing"
    assert failed["dlq_entry_id"] == again.id
    assert failed["error_type"] == "KeyError"
    assert failed["error"] == "'release_notes'"
    assert outcome["error_type"].isna().sum() == 2


def test_only_a_complete_marker_makes_other_groups_skip(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    """Defect 4, on a real server: a producer's ``replay_group`` field (or a partial marker)
    is an ordinary event every group handles; a real replay for one group is skipped by the
    others."""
    r = streams_client.redis
    plain = streams_client.add_to_stream(
        stream_name, {"event_type": "push", "replay_group": "billing", "replay_of": "1-1"}
    )
    partial = streams_client.add_to_stream(
        stream_name,
        {"event_type": "push", "streamlab:replay_group": "billing", "streamlab:replay_id": "x"},
    )
    dead = dlq_fields(0, stream_name, group="billing", extra={"replay_group": "audit"})
    fill_dlq(r, streams_client.dlq_stream(stream_name), [dead])
    report = replay_dlq(streams_client, stream_name)
    [replayed] = report.mapping.values()
    seen: dict[str, list[str]] = {"audit": [], "billing": []}
    stats: dict[str, RunStats] = {}
    for group in seen:
        streams_client.ensure_group(stream_name, group, "0")
        stats[group] = consumer(streams_client, stream_name, group).run(
            lambda m, g=group: seen[g].append(m.id), burst=True, handle_signals=False
        )
    assert seen["billing"] == [plain, partial, replayed]
    assert seen["audit"] == [plain, partial]
    assert (stats["audit"].skipped, stats["audit"].acked) == (1, 2)
    assert (stats["billing"].skipped, stats["billing"].acked) == (0, 3)
    for group in seen:
        assert r.xpending(stream_name, group)["pending"] == 0
    # The producer's own replay_group field is kept through the DLQ and the replay.
    [(_, fields)] = r.xrange(stream_name, replayed, replayed)
    assert fields[b"replay_group"] == b"audit"
    assert fields[b"streamlab:replay_group"] == b"billing"
    assert fields[b"streamlab:replay_id"] == report.replay_id.encode()
