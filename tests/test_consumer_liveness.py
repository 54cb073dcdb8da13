"""Long and hung handlers: a batch in hand is renewed while it is handled, `handler_timeout`
interrupts a handler, and a stop interrupts one still running after `shutdown_grace`.

Consumers run in threads (the asynchronous-exception path) or, with ``handle_signals=True``,
in the test's main thread (the SIGALRM path), on the session's real server.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import redis
from faults.ledger import ledger_check

from streamlab._lease import Watchdog
from streamlab.backoff import Backoff
from streamlab.client import RedisStreamsClient, connect
from streamlab.config import load_settings
from streamlab.consumer import Consumer, ConsumerConfig, RunStats
from streamlab.errors import ConfigError
from streamlab.events import StreamEvent, StreamMessage

FAST = Backoff(initial=timedelta(milliseconds=50), max=timedelta(milliseconds=50))


def add(client: RedisStreamsClient, stream: str, n: int) -> list[str]:
    return client.add_many(stream, (StreamEvent(event_type="push") for _ in range(n)))


def pending(r: redis.Redis, stream: str) -> dict[str, tuple[str, int]]:
    rows: list[dict[str, Any]] = r.xpending_range(stream, "g", "-", "+", 1000)
    return {
        x["message_id"].decode(): (x["consumer"].decode(), int(x["times_delivered"])) for x in rows
    }


def wait_for(condition: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class Running:
    """A consumer running in a thread until `stop`."""

    def __init__(self, url: str, cfg: ConsumerConfig, handler: Callable[[StreamMessage], None]):
        self.consumer = Consumer(RedisStreamsClient(connect(url)), cfg)
        self.stop_event = threading.Event()
        self.result: list[RunStats] = []
        self.thread = threading.Thread(
            target=lambda: self.result.append(
                self.consumer.run(handler, handle_signals=False, stop_event=self.stop_event)
            )
        )
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> RunStats:
        self.stop_event.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the consumer did not stop"
        return self.result[0]


def test_a_batch_slower_than_claim_min_idle_stays_with_its_worker(
    redis_url: str, streams_client: RedisStreamsClient, stream_name: str
) -> None:
    # Before the watchdog, the second consumer reclaimed the slow batch's other messages once
    # they had sat claim_min_idle, and handled them a second time.
    r = streams_client.redis
    ids = add(streams_client, stream_name, 3)
    streams_client.ensure_group(stream_name, "g")
    seen: dict[str, list[str]] = {"slow": [], "fast": []}
    snapshots: list[dict[str, tuple[str, int]]] = []
    base = dict(stream=stream_name, group="g", backoff=FAST, claim_min_idle=timedelta(seconds=0.6))

    def slow(msg: StreamMessage) -> None:
        seen["slow"].append(msg.id)
        time.sleep(0.6)  # the batch of 3 takes 1.8 s: three times claim_min_idle
        snapshots.append(pending(r, stream_name))

    slow_worker = Running(redis_url, ConsumerConfig(consumer="slow", batch_size=3, **base), slow)
    wait_for(lambda: bool(seen["slow"]), what="the slow worker to take the batch")
    fast_worker = Running(
        redis_url, ConsumerConfig(consumer="fast", **base), lambda m: seen["fast"].append(m.id)
    )
    try:
        wait_for(lambda: len(snapshots) == 3, what="the slow batch")
        time.sleep(1.0)  # room for a wrong reclaim of anything left over
    finally:
        slow_stats = slow_worker.stop()
        fast_stats = fast_worker.stop()

    assert (seen["slow"], seen["fast"]) == (ids, [])
    # While it was handled, the whole batch stayed the slow worker's, at its first delivery.
    for snapshot in snapshots:
        assert {i: snapshot[i] for i in ids if i in snapshot} == {
            i: ("slow", 1) for i in ids if i in snapshot
        }
    assert set(snapshots[0]) == set(ids)
    assert (slow_stats.acked, fast_stats.reclaimed, fast_stats.acked) == (3, 0, 0)
    assert pending(r, stream_name) == {}


def test_renewal_never_takes_back_a_message_another_consumer_took_over(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    r = streams_client.redis
    mine, taken = add(streams_client, stream_name, 2)
    streams_client.ensure_group(stream_name, "g")
    batch = r.xreadgroup("g", "c1", {stream_name: ">"})[0][1]
    dog = Watchdog(
        r,
        stream_name,
        "g",
        "c1",
        claim_min_idle=0.9,  # renews every 0.3 s
        handler_timeout=None,
        shutdown_grace=1.0,
        stop=threading.Event(),
    ).start()
    try:
        dog.hold(batch)
        wait_for(lambda: dog.renewals >= 1, what="a first renewal")
        # c2 takes one message over between two renewals (min-idle 0 stands in for a claim
        # after c1's lease had lapsed): its delivery is younger than c1's last renewal.
        time.sleep(0.1)
        assert r.xclaim(stream_name, "g", "c2", 0, [taken], justid=True) == [taken.encode()]
        wait_for(lambda: dog.renewals >= 3, what="two more renewals")
        stamps = dog.release()
    finally:
        dog.close()
    assert pending(r, stream_name) == {mine: ("c1", 1), taken: ("c2", 1)}
    assert set(stamps) == {mine}  # the consumer's retry hand-over then uses the renewal time
    [row] = r.xpending_range(stream_name, "g", mine, mine, 1)
    assert row["time_since_delivered"] < 900  # renewed, never left to reach claim_min_idle


def test_a_failure_at_the_end_of_a_renewed_batch_is_retried_on_schedule(
    redis_url: str, streams_client: RedisStreamsClient, stream_name: str
) -> None:
    # The retry hand-over checks that nobody took the message since it was last ours; after
    # renewals that is the last renewal, not the read.
    ids = add(streams_client, stream_name, 2)
    attempts: list[tuple[str, int]] = []

    def handler(msg: StreamMessage) -> None:
        attempts.append((msg.id, msg.delivery_count))
        if msg.delivery_count == 1:
            time.sleep(0.5)
            if msg.id == ids[1]:
                raise ValueError("fails once")

    cfg = ConsumerConfig(
        stream=stream_name,
        group="g",
        batch_size=2,
        backoff=FAST,
        claim_min_idle=timedelta(seconds=0.6),
    )
    stats = Consumer(streams_client, cfg).run(handler, burst=True, handle_signals=False)
    assert attempts == [(ids[0], 1), (ids[1], 1), (ids[1], 2)]
    assert (stats.retried, stats.reclaimed, stats.acked) == (1, 0, 2)
    assert pending(streams_client.redis, stream_name) == {}


def test_handler_timeout_interrupts_a_handler_in_a_thread_and_counts_a_timeout_error(
    redis_url: str, streams_client: RedisStreamsClient, stream_name: str
) -> None:
    ids = add(streams_client, stream_name, 3)
    handled: list[str] = []

    def handler(msg: StreamMessage) -> None:
        if msg.id == ids[1]:
            try:
                while True:  # Python code: an asynchronous exception stops it
                    time.sleep(0.01)
            except Exception:  # the interruption is no Exception: this cannot swallow it
                pass
        handled.append(msg.id)

    cfg = ConsumerConfig(
        stream=stream_name,
        group="g",
        max_retries=0,
        handler_timeout=timedelta(seconds=0.3),
        claim_min_idle=timedelta(seconds=5),
    )
    started = time.monotonic()
    result: list[RunStats] = []
    consumer = Consumer(streams_client, cfg)
    thread = threading.Thread(
        target=lambda: result.append(consumer.run(handler, burst=True, handle_signals=False))
    )
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    assert time.monotonic() - started < 5
    assert handled == [ids[0], ids[2]]
    [stats] = result
    assert (stats.failed, stats.dead_lettered, stats.errors) == (1, 1, {"TimeoutError": 1})
    [dead] = streams_client.read_dlq(stream_name)
    assert dead.failure is not None
    assert (dead.failure.source_id, dead.failure.error_type) == (ids[1], "TimeoutError")
    assert "handler_timeout (0.3 s)" in dead.failure.error
    assert pending(streams_client.redis, stream_name) == {}


def test_handler_timeout_interrupts_a_sleep_in_the_main_thread_then_the_retry_succeeds(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    add(streams_client, stream_name, 1)
    attempts: list[int] = []
    before = signal.getsignal(signal.SIGALRM)  # pytest-timeout's own, when it uses signals

    def handler(msg: StreamMessage) -> None:
        attempts.append(msg.delivery_count)
        if msg.delivery_count == 1:
            time.sleep(30)  # C code: only a signal breaks it

    cfg = ConsumerConfig(
        stream=stream_name,
        group="g",
        backoff=FAST,
        handler_timeout=timedelta(seconds=0.3),
        claim_min_idle=timedelta(seconds=5),
    )
    started = time.monotonic()
    stats = Consumer(streams_client, cfg).run(handler, burst=True, handle_signals=True)
    assert time.monotonic() - started < 5
    assert attempts == [1, 2]
    assert (stats.retried, stats.acked, stats.errors) == (1, 1, {"TimeoutError": 1})
    assert signal.getsignal(signal.SIGALRM) == before
    assert pending(streams_client.redis, stream_name) == {}
    assert streams_client.read_dlq(stream_name) == []


def test_a_stop_interrupts_a_hung_handler_after_the_grace_and_leaves_its_batch_pending(
    redis_url: str, streams_client: RedisStreamsClient, stream_name: str
) -> None:
    r = streams_client.redis
    ids = add(streams_client, stream_name, 3)
    hung = threading.Event()

    def handler(msg: StreamMessage) -> None:
        if msg.id == ids[1]:
            hung.set()
            while True:
                time.sleep(0.01)

    cfg = ConsumerConfig(
        stream=stream_name,
        group="g",
        consumer="c",
        batch_size=3,
        shutdown_grace=timedelta(seconds=0.5),
        claim_min_idle=timedelta(seconds=30),
    )
    worker = Running(redis_url, cfg, handler)
    assert hung.wait(10)
    asked = time.monotonic()
    stats = worker.stop(timeout=5)
    took = time.monotonic() - asked
    assert 0.5 <= took < 2.0, took  # the grace, plus the watchdog's 0.1 s tick and settling
    assert (stats.acked, stats.failed, stats.retried, stats.dead_lettered) == (1, 0, 0, 0)
    # Neither acked nor dead-lettered, attempt count unchanged: the next consumer takes them.
    assert pending(r, stream_name) == {ids[1]: ("c", 1), ids[2]: ("c", 1)}
    assert streams_client.read_dlq(stream_name) == []


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"handler_timeout": timedelta(0)}, "handler_timeout"),
        ({"handler_timeout": "-1s"}, "handler_timeout"),
        ({"shutdown_grace": timedelta(seconds=-1)}, "shutdown_grace"),
    ],
)
def test_time_limits_must_not_be_negative(values: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        ConsumerConfig(stream="s", group="g", **values)


def test_time_limits_take_duration_strings() -> None:
    cfg = ConsumerConfig(stream="s", group="g", handler_timeout="1m30s", shutdown_grace="250ms")
    assert (cfg.handler_timeout, cfg.shutdown_grace) == (
        timedelta(seconds=90),
        timedelta(milliseconds=250),
    )
    assert ConsumerConfig(stream="s", group="g").handler_timeout is None


def test_settings_carry_the_time_limits_to_the_consumer() -> None:
    streams = {
        "a": {"consumer_group": "g", "handler_timeout": "30s", "shutdown_grace": "2s"},
        "b": {"consumer_group": "g"},
    }
    settings = load_settings(streams=streams)
    a, b = settings.consumer_config("a"), settings.consumer_config("b")
    assert (a.handler_timeout, a.shutdown_grace) == (timedelta(seconds=30), timedelta(seconds=2))
    assert (b.handler_timeout, b.shutdown_grace) == (None, timedelta(seconds=10))
    with pytest.raises(ConfigError, match="handler_timeout"):
        load_settings(streams={"c": {"consumer_group": "g", "handler_timeout": "0s"}})


def test_handlers_ending_around_their_deadline_never_leak_an_interruption(
    redis_client: redis.Redis, streams_client: RedisStreamsClient, stream_name: str
) -> None:
    # The race an asynchronous exception invites: the handler returns just as the watchdog
    # fires. The exception must land in the handler or be cancelled, never in the loop.
    ids = add(streams_client, stream_name, 40)
    handled: Counter[str] = Counter()
    rng = random.Random(8)

    def handler(msg: StreamMessage) -> None:
        end = time.monotonic() + rng.uniform(0.03, 0.07)
        while time.monotonic() < end:
            time.sleep(0.001)
        handled[msg.id] += 1

    cfg = ConsumerConfig(
        stream=stream_name,
        group="g",
        max_retries=20,
        backoff=FAST,
        handler_timeout=timedelta(seconds=0.05),
        claim_min_idle=timedelta(seconds=5),
    )
    result: list[RunStats] = []
    errors: list[BaseException] = []
    consumer = Consumer(streams_client, cfg)

    def run() -> None:
        try:
            result.append(consumer.run(handler, burst=True, handle_signals=False))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    assert not thread.is_alive()
    assert errors == []
    [stats] = result
    assert list(stats.errors) == ["TimeoutError"], stats.errors
    ledger = ledger_check(redis_client, stream_name, "g", ids, handled)
    ledger.assert_nothing_lost()
    assert ledger.dlq == 0
