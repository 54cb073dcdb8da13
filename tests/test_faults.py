"""Faults against a real server: workers SIGKILLed while holding messages, graceful shutdown
on SIGTERM or a stop event, retries that outlive their worker. The fault suite's scenarios
(with ledgers and report rows) are in tests/faults/.

Workers are real processes (``tests/workers.py``) on the same server as the test.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from faults.common import add, spawn, wait_for
from prometheus_client import CollectorRegistry

from streamlab.backoff import Backoff
from streamlab.client import RedisStreamsClient, connect
from streamlab.consumer import Consumer, ConsumerConfig, RunStats
from streamlab.events import StreamMessage
from streamlab.metrics import PrometheusMetrics
from streamlab.records import ReplayMarker


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def pending(r: redis.Redis, stream: str) -> list[tuple[str, str, int]]:
    rows: list[dict[str, Any]] = r.xpending_range(stream, "g", "-", "+", 1000)
    return [
        (x["message_id"].decode(), x["consumer"].decode(), int(x["times_delivered"])) for x in rows
    ]


def run_in_thread(
    url: str, cfg: ConsumerConfig, until: int, metrics: PrometheusMetrics | None = None
) -> tuple[list[tuple[str, int]], RunStats]:
    """Run a consumer (not in burst mode) until its handler has seen ``until`` messages."""
    seen: list[tuple[str, int]] = []
    stop = threading.Event()

    def handler(msg: StreamMessage) -> None:
        seen.append((msg.id, msg.delivery_count))
        if len(seen) >= until:
            stop.set()

    consumer = Consumer(RedisStreamsClient(connect(url)), cfg, metrics=metrics)
    result: list[RunStats] = []
    thread = threading.Thread(
        target=lambda: result.append(consumer.run(handler, handle_signals=False, stop_event=stop))
    )
    thread.start()
    thread.join(timeout=20)
    stop.set()
    thread.join(timeout=5)
    assert result, "the consumer did not stop"
    return seen, result[0]


def sample(registry: CollectorRegistry, name: str, stream: str) -> float | None:
    return registry.get_sample_value(name, {"stream": stream, "group": "g"})


def hold_and_kill(url: str, stream: str, tmp_path: Path, batch: int) -> str:
    """Start a worker that takes a batch and hangs in its handler; SIGKILL it; its name."""
    ready = tmp_path / "ready"
    worker = spawn(
        url, stream, "doomed", "block", "--ready", str(ready), "--batch-size", str(batch)
    )
    try:
        wait_for(ready.exists, what="the worker to hold its batch")
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.communicate(timeout=10)
    assert worker.returncode == -signal.SIGKILL
    return "doomed"


def test_sigkilled_worker_messages_are_reclaimed_and_attempts_keep_counting(
    redis_url: str, streams_client: RedisStreamsClient, stream_name: str, tmp_path: Path
) -> None:
    r = streams_client.redis
    held = add(streams_client, stream_name, 5)
    streams_client.ensure_group(stream_name, "g")
    hold_and_kill(redis_url, stream_name, tmp_path, batch=5)
    assert pending(r, stream_name) == [(i, "doomed", 1) for i in held]
    fresh = add(streams_client, stream_name, 3)

    registry = CollectorRegistry()
    cfg = ConsumerConfig(
        stream=stream_name,
        group="g",
        consumer="rescuer",
        claim_min_idle=timedelta(seconds=0.5),
        backoff=Backoff(initial=timedelta(seconds=0.1)),
        block_duration=timedelta(seconds=0.2),
    )
    seen, stats = run_in_thread(redis_url, cfg, until=8, metrics=PrometheusMetrics(registry))

    # Every entry handled successfully exactly once; the reclaimed ones on their 2nd delivery.
    assert Counter(i for i, _ in seen) == dict.fromkeys(held + fresh, 1)
    assert sorted(seen) == sorted([(i, 2) for i in held] + [(i, 1) for i in fresh])
    assert (stats.reclaimed, stats.acked, stats.lost) == (5, 8, 0)
    assert sample(registry, "queue_messages_reclaimed_total", stream_name) == 5
    assert pending(r, stream_name) == []


def test_sigterm_finishes_the_batch_in_hand_and_acks_what_was_done(
    redis_url: str, streams_client: RedisStreamsClient, stream_name: str, tmp_path: Path
) -> None:
    r = streams_client.redis
    ids = add(streams_client, stream_name, 60)
    out = tmp_path / "handled"
    worker = spawn(redis_url, stream_name, "w", "slow", "--out", str(out), "--sleep", "0.1")
    wait_for(lambda: len(lines(out)) >= 7, what="the worker to handle a few messages")
    worker.send_signal(signal.SIGTERM)
    stdout, stderr = worker.communicate(timeout=5)
    assert worker.returncode == 0, stderr

    handled = lines(out)
    assert len(handled) == len(set(handled))
    stats = json.loads(stdout)
    assert stats["acked"] == len(handled)
    assert pending(r, stream_name) == []
    [group] = streams_client.get_stream_info(stream_name).groups
    delivered = [i for i in ids if _key(i) <= _key(group.last_delivered_id)]
    assert set(delivered) == set(handled)  # delivered, not pending: acked
    assert group.lag == len(ids) - len(handled) > 0  # the rest waits for the next worker


def _key(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


def test_stop_event_from_another_thread_stops_cleanly(
    redis_url: str, streams_client: RedisStreamsClient, stream_name: str
) -> None:
    add(streams_client, stream_name, 50)
    stop = threading.Event()
    handled: list[str] = []

    def handler(msg: StreamMessage) -> None:
        time.sleep(0.02)
        handled.append(msg.id)

    cfg = ConsumerConfig(stream=stream_name, group="g", consumer="c", batch_size=5)
    consumer = Consumer(RedisStreamsClient(connect(redis_url)), cfg)
    result: list[RunStats] = []
    thread = threading.Thread(
        target=lambda: result.append(consumer.run(handler, handle_signals=False, stop_event=stop))
    )
    thread.start()
    wait_for(lambda: len(handled) >= 7, what="a few messages")
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert result[0].acked == len(handled) < 50
    assert pending(streams_client.redis, stream_name) == []
    [group] = streams_client.get_stream_info(stream_name).groups
    assert group.lag == 50 - len(handled)


def test_a_retry_survives_its_worker_and_is_taken_by_another(
    redis_url: str, streams_client: RedisStreamsClient, stream_name: str
) -> None:
    # The first worker fails the message and disappears while the retry waits its backoff:
    # the retry is pending in the group (owned by the retry placeholder), so another worker
    # that never saw the message takes it once it is due, on delivery 2.
    [entry] = add(streams_client, stream_name, 1)
    cfg: dict[str, Any] = {
        "stream": stream_name,
        "group": "g",
        "claim_min_idle": timedelta(seconds=1),
        "backoff": {"initial": timedelta(seconds=0.3), "first_immediate": False},
        "max_retries": 1,
    }
    streams_client.ensure_group(stream_name, "g")
    first = Consumer(RedisStreamsClient(connect(redis_url)), ConsumerConfig(consumer="a", **cfg))
    [msg] = first.read_messages(block=1)
    first.nack_message(msg.id, RuntimeError("flaky"))
    first.redis.close()
    assert [(i, c) for i, c, _ in pending(streams_client.redis, stream_name)] == [
        (entry, "streamlab:retry")
    ]
    seen: list[tuple[str, int]] = []
    second = Consumer(streams_client, ConsumerConfig(consumer="b", **cfg))
    stats = second.run(
        lambda m: seen.append((m.id, m.delivery_count)), burst=True, handle_signals=False
    )
    assert seen == [(entry, 2)]
    assert (stats.acked, stats.reclaimed) == (1, 0)  # a due retry, not a reclaim
    assert pending(streams_client.redis, stream_name) == []


def test_a_hung_consumer_cannot_dead_letter_a_message_taken_over_by_another(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    # c1 hangs past claim_min_idle; c2 takes the message over. When c1 comes back and its
    # retries are spent, the dead-letter step must not move an entry that c2 now owns.
    r = streams_client.redis
    [entry] = add(streams_client, stream_name, 1)
    streams_client.ensure_group(stream_name, "g")
    cfg = ConsumerConfig(
        stream=stream_name,
        group="g",
        consumer="c1",
        max_retries=0,
        claim_min_idle=timedelta(milliseconds=1),
    )
    hung = Consumer(streams_client, cfg)
    [msg] = hung.read_messages(block=1)
    r.xclaim(stream_name, "g", "c2", 0, [entry])
    hung.nack_message(msg.id, RuntimeError("late"))
    assert streams_client.read_dlq(stream_name) == []
    assert [(i, c) for i, c, _ in pending(r, stream_name)] == [(entry, "c2")]
    assert hung.stats.dead_lettered == 0


def test_read_messages_settles_entries_that_need_no_handler(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    good = add(streams_client, stream_name, 1)
    streams_client.add_to_stream(stream_name, {"event_type": "x", "payload": "{oops"})
    marker = ReplayMarker("run-1", "1-1", 1, datetime.now(UTC), "other").to_fields()
    streams_client.add_to_stream(stream_name, {"event_type": "x", **marker})
    # A producer's own replay_group field is data, not a marker: handled like any event.
    good.append(streams_client.add_to_stream(stream_name, {"event_type": "x", "replay_group": "o"}))
    config = ConsumerConfig(stream=stream_name, group="g", consumer="c")
    streams_client.ensure_group(stream_name, "g")
    consumer = Consumer(streams_client, config)
    batch = consumer.read_messages(block=0.01)
    assert [m.id for m in batch] == good
    assert [m.failure.error_type for m in streams_client.read_dlq(stream_name)] == ["DecodeError"]  # type: ignore[union-attr]
    assert [(p[0], p[1]) for p in pending(streams_client.redis, stream_name)] == [
        (i, "c") for i in good
    ]
