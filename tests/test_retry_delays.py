"""Retry delays independent of ``claim_min_idle``, against a real server.

A failed message's due time is written to the group's sorted set, then the message is parked
under ``streamlab:retry``; the claim clock shows it after ``claim_min_idle`` at the latest, and
the claim path parks it again until it is due. Where a test would have to wait hours, it sets
the state directly instead: ``XCLAIM ... IDLE`` ages a parked message, a due time in the past
makes it due.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import redis
from faults.ledger import HandledLog, ledger_check

from streamlab.backoff import Backoff
from streamlab.client import RedisStreamsClient, connect
from streamlab.consumer import Consumer, ConsumerConfig
from streamlab.errors import Retry
from streamlab.events import StreamEvent, StreamMessage
from streamlab.frames import pending_to_dataframe
from streamlab.keys import retry_due_key
from streamlab.policy import RETRY_CONSUMER, Action

# Never early (bar the clocks' millisecond rounding); late by a claim poll or two, widely
# bounded for a busy machine.
EARLY = 0.05
LATE = 1.0
DAY = timedelta(hours=24)


def config(stream: str, **kwargs: Any) -> ConsumerConfig:
    kwargs.setdefault("consumer", "c1")
    kwargs.setdefault("block_duration", timedelta(seconds=0.2))
    return ConsumerConfig(stream=stream, group="g", **kwargs)


def add(client: RedisStreamsClient, stream: str, n: int) -> list[str]:
    return client.add_many(stream, (StreamEvent(event_type="push") for _ in range(n)))


def pending_rows(r: redis.Redis, stream: str) -> dict[str, tuple[str, int, int]]:
    """id -> (owner, deliveries, idle ms)."""
    rows: list[dict[str, Any]] = r.xpending_range(stream, "g", "-", "+", 100)
    return {
        x["message_id"].decode(): (
            x["consumer"].decode(),
            int(x["times_delivered"]),
            int(x["time_since_delivered"]),
        )
        for x in rows
    }


def due_rows(r: redis.Redis, stream: str) -> dict[str, float]:
    return {k.decode(): v for k, v in r.zrange(retry_due_key(stream, "g"), 0, -1, withscores=True)}


def age(r: redis.Redis, stream: str, entry_id: str, idle_ms: int) -> None:
    """Make a parked retry look idle for ``idle_ms``, without a delivery (fakes the wait)."""
    assert r.xclaim(stream, "g", RETRY_CONSUMER, 0, [entry_id], idle=idle_ms, justid=True)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def read_until(consumer: Consumer, timeout: float) -> list[StreamMessage]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = consumer.read_messages(block=0.05)
        if got:
            return got
    return []


# -- the wait itself -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claim_min_idle", "delay"),
    [(0.5, 2.0), (0.001, 1.0)],  # with 1 ms, a waiting retry always shows: parked each poll
)
def test_a_2s_backoff_with_claim_min_idle_half_a_second_retries_after_2s(
    redis_url: str,
    streams_client: RedisStreamsClient,
    stream_name: str,
    claim_min_idle: float,
    delay: float,
) -> None:
    [entry] = add(streams_client, stream_name, 1)
    cfg = config(
        stream_name,
        claim_min_idle=timedelta(seconds=claim_min_idle),
        backoff=Backoff(initial=timedelta(seconds=delay), first_immediate=False),
    )
    calls: list[tuple[float, str, int]] = []

    def fail_once(msg: StreamMessage) -> None:
        calls.append((time.monotonic(), msg.id, msg.delivery_count))
        if msg.delivery_count == 1:
            raise TimeoutError("upstream timed out")

    consumer = Consumer(RedisStreamsClient(connect(redis_url)), cfg)
    cpu = time.process_time()
    # Burst mode: the parked retry is work left, so the run neither ends early nor spins.
    stats = consumer.run(fail_once, burst=True, handle_signals=False)
    cpu = time.process_time() - cpu

    [(first, *one), (second, *two)] = calls
    assert (one, two) == ([entry, 1], [entry, 2])
    assert delay - EARLY <= second - first <= delay + LATE, second - first
    assert (stats.failed, stats.retried, stats.acked, stats.reclaimed) == (1, 1, 1, 0)
    assert cpu < 0.5 * stats.duration, (cpu, stats.duration)  # waiting, not polling hot
    assert pending_rows(streams_client.redis, stream_name) == {}
    assert due_rows(streams_client.redis, stream_name) == {}  # removed with the ack
    assert streams_client.read_dlq(stream_name) == []


def test_a_retry_is_parked_again_each_time_the_claim_clock_shows_it_early(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    r = streams_client.redis
    [entry] = add(streams_client, stream_name, 1)
    streams_client.ensure_group(stream_name, "g")
    cfg = config(
        stream_name,
        claim_min_idle=timedelta(seconds=0.5),
        claim_interval=timedelta(milliseconds=1),
        backoff=Backoff(initial=timedelta(seconds=2), first_immediate=False),
    )
    consumer = Consumer(streams_client, cfg)
    [msg] = consumer.read_messages(block=1)
    failed_at = time.time()
    assert consumer.nack_message(msg.id, TimeoutError("later")) is Action.RETRY
    [due] = due_rows(r, stream_name).values()
    assert failed_at + 2.0 - EARLY <= due / 1000 <= time.time() + 2.0 + EARLY

    # Past claim_min_idle (twice over) the retry is shown to the claim path, which parks it
    # again instead of handing it out: still one delivery, still waiting.
    deadline = time.monotonic() + 1.1
    while time.monotonic() < deadline:
        assert consumer.read_messages(block=0.05) == []
        owner, deliveries, idle = pending_rows(r, stream_name)[entry]
        assert (owner, deliveries) == (RETRY_CONSUMER, 1)
        assert idle < 500 + 200  # parked again each time it showed (a poll of slack)
    assert time.time() * 1000 < due - 500  # the checks above all ran well before the due time
    [again] = read_until(consumer, timeout=2.0 + LATE)
    got_at = time.time()
    assert (again.id, again.delivery_count) == (entry, 2)
    assert due / 1000 - EARLY <= got_at <= due / 1000 + LATE
    assert consumer.ack_message(entry) == 1
    assert due_rows(r, stream_name) == {}


def test_a_24h_backoff_with_claim_min_idle_30s_stays_parked_until_due(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    r = streams_client.redis
    [entry] = add(streams_client, stream_name, 1)
    streams_client.ensure_group(stream_name, "g")
    cfg = config(
        stream_name,
        claim_min_idle=timedelta(seconds=30),
        claim_interval=timedelta(milliseconds=1),
        max_retries=2,
        backoff=Backoff(initial=DAY, max=DAY, first_immediate=False),
    )  # accepted: the schedule no longer has to fit claim_min_idle
    consumer = Consumer(streams_client, cfg)
    [msg] = consumer.read_messages(block=1)
    before = int(time.time() * 1000)
    assert consumer.nack_message(msg.id, ConnectionError("upstream down")) is Action.RETRY
    [due] = due_rows(r, stream_name).values()
    day_ms = DAY.total_seconds() * 1000
    assert before + day_ms <= due <= time.time() * 1000 + day_ms
    assert pending_rows(r, stream_name)[entry][:2] == (RETRY_CONSUMER, 1)

    # Hours later (faked): the claim clock shows it; it is parked again, not delivered.
    for _ in range(3):
        age(r, stream_name, entry, 31_000)
        time.sleep(0.01)  # claim_interval is 1 ms
        assert consumer.read_messages(block=0) == []
        owner, deliveries, idle = pending_rows(r, stream_name)[entry]
        assert (owner, deliveries) == (RETRY_CONSUMER, 1)
        assert idle < 30_000
    assert due_rows(r, stream_name) == {entry: due}
    age(r, stream_name, entry, 31_000)  # shown by the claim clock, but not due: not claimable
    frame = pending_to_dataframe(streams_client, stream_name, "g", claim_min_idle=30)
    assert frame["state"].astype(str).tolist() == ["retry_wait"]
    assert frame["retry_due_at"].tolist() == [pd.Timestamp(int(due), unit="ms", tz="UTC")]
    assert frame["claimable"].tolist() == [False]

    # The day has passed (faked): due, claimed as attempt 2, and the next retry a day away.
    r.zadd(retry_due_key(stream_name, "g"), {entry: time.time() * 1000 - 1000})
    age(r, stream_name, entry, 31_000)
    frame = pending_to_dataframe(streams_client, stream_name, "g", claim_min_idle=30)
    assert frame["claimable"].tolist() == [True]
    time.sleep(0.01)
    [again] = consumer.read_messages(block=0)
    assert (again.id, again.delivery_count) == (entry, 2)
    before = int(time.time() * 1000)
    assert consumer.nack_message(entry, ConnectionError("still down")) is Action.RETRY
    [due2] = due_rows(r, stream_name).values()
    assert before + day_ms <= due2 <= time.time() * 1000 + day_ms  # Backoff.max caps 48 h
    assert pending_rows(r, stream_name)[entry][:2] == (RETRY_CONSUMER, 2)

    # Attempt 3 is the last (max_retries=2): its failure dead-letters, attempts exact.
    r.zadd(retry_due_key(stream_name, "g"), {entry: time.time() * 1000 - 1000})
    age(r, stream_name, entry, 31_000)
    time.sleep(0.01)
    [last] = consumer.read_messages(block=0)
    assert last.delivery_count == 3
    assert consumer.nack_message(entry, ConnectionError("gone")) is Action.DEAD_LETTER
    [dead] = streams_client.read_dlq(stream_name)
    assert dead.fields["dlq_attempts"] == b"3"
    assert pending_rows(r, stream_name) == {}
    assert due_rows(r, stream_name) == {}  # removed with the dead letter


def test_a_handlers_retry_delay_longer_than_claim_min_idle_is_kept(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    r = streams_client.redis
    [entry] = add(streams_client, stream_name, 1)
    streams_client.ensure_group(stream_name, "g")

    def later(msg: StreamMessage) -> None:
        raise Retry("rate limited", delay=3600)

    consumer = Consumer(streams_client, config(stream_name, claim_min_idle=timedelta(seconds=1)))
    before = int(time.time() * 1000)
    consumer.process(consumer.read_messages(block=1), later)
    assert (consumer.stats.failed, consumer.stats.retried) == (1, 1)
    [due] = due_rows(r, stream_name).values()
    assert before + 3_600_000 <= due <= time.time() * 1000 + 3_600_000  # not cut to 1 s
    assert pending_rows(r, stream_name)[entry][:2] == (RETRY_CONSUMER, 1)


def test_waiting_retries_shown_early_do_not_hide_a_dead_workers_message_behind_them(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    """The claim path parks them again and looks at the next page in the same pass."""
    r = streams_client.redis
    ids = add(streams_client, stream_name, 6)
    streams_client.ensure_group(stream_name, "g")
    r.xreadgroup("g", "dead-worker", {stream_name: ">"}, count=6)
    *waiting, orphan = ids
    r.zadd(retry_due_key(stream_name, "g"), dict.fromkeys(waiting, time.time() * 1000 + 3.6e6))
    r.xclaim(stream_name, "g", RETRY_CONSUMER, 0, waiting, idle=31_000, justid=True)
    r.xclaim(stream_name, "g", "dead-worker", 0, [orphan], idle=31_000, justid=True)
    cfg = config(stream_name, batch_size=2, claim_min_idle=timedelta(seconds=30))
    consumer = Consumer(streams_client, cfg)
    [msg] = consumer.read_messages(block=0)
    assert (msg.id, msg.delivery_count) == (orphan, 2)
    rows = pending_rows(r, stream_name)
    assert {i: rows[i][:2] for i in waiting} == dict.fromkeys(waiting, (RETRY_CONSUMER, 1))
    assert all(rows[i][2] < 30_000 for i in waiting)  # parked again, hidden from the claim


# -- crashes between the steps, stale rows -------------------------------------------------


def test_a_crash_between_the_two_steps_loses_nothing_and_delays_nothing_forever(
    redis_url: str, streams_client: RedisStreamsClient, stream_name: str
) -> None:
    """The due time is written before the message is parked. A crash between the two leaves
    a row beside a message its dead worker still holds: it is reclaimed from that worker
    after claim_min_idle, the row ignored. A parked message without a row (parked by an
    older streamlab, or its row pruned) is due when the claim clock shows it."""
    r = streams_client.redis
    row_only, parked_only = add(streams_client, stream_name, 2)
    streams_client.ensure_group(stream_name, "g")
    r.xreadgroup("g", "dead-worker", {stream_name: ">"}, count=2)
    key = retry_due_key(stream_name, "g")
    r.zadd(key, {row_only: time.time() * 1000 + 3_600_000})  # step 1 of a retry, then death
    r.xclaim(stream_name, "g", RETRY_CONSUMER, 0, [parked_only], idle=0, justid=True)

    cfg = config(stream_name, consumer="rescuer", claim_min_idle=timedelta(seconds=0.5))
    seen: list[tuple[str, int]] = []
    rescuer = Consumer(RedisStreamsClient(connect(redis_url)), cfg)
    started = time.monotonic()
    lost = 0
    # Burst does not wait for a dead consumer's messages: run until both are claimed.
    while len(seen) < 2 and time.monotonic() - started < 10:
        stats = rescuer.run(
            lambda m: seen.append((m.id, m.delivery_count)), burst=True, handle_signals=False
        )
        lost += stats.lost
    assert sorted(seen) == sorted([(row_only, 2), (parked_only, 2)])
    # Neither waited for the row's hour: both came within a few claim_min_idle.
    assert time.monotonic() - started < 5
    assert pending_rows(r, stream_name) == {}
    assert due_rows(r, stream_name) == {}  # the stale row went with the ack
    assert lost == 0


def test_overdue_rows_are_pruned_by_score_and_waiting_ones_kept(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    r = streams_client.redis
    acked, waiting = add(streams_client, stream_name, 2)
    streams_client.ensure_group(stream_name, "g")
    key = retry_due_key(stream_name, "g")
    now = time.time() * 1000
    # A row left by an ack someone else made (or a worker dying between ack and removal).
    r.zadd(key, {acked: now - 10_000, waiting: now + 3_600_000})
    r.xreadgroup("g", "w", {stream_name: ">"}, count=2)
    r.xack(stream_name, "g", acked)
    r.xclaim(stream_name, "g", RETRY_CONSUMER, 0, [waiting], idle=0, justid=True)
    consumer = Consumer(streams_client, config(stream_name, claim_min_idle=timedelta(seconds=1)))
    assert consumer.read_messages(block=0) == []
    assert due_rows(r, stream_name) == {waiting: now + 3_600_000}


def test_a_waiting_retry_deleted_from_the_stream_is_counted_lost_and_its_row_dropped(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    r = streams_client.redis
    [entry] = add(streams_client, stream_name, 1)
    streams_client.ensure_group(stream_name, "g")
    cfg = config(
        stream_name,
        claim_min_idle=timedelta(seconds=30),
        claim_interval=timedelta(milliseconds=1),
        backoff=Backoff(initial=DAY, max=DAY, first_immediate=False),
    )
    consumer = Consumer(streams_client, cfg)
    [msg] = consumer.read_messages(block=1)
    assert consumer.nack_message(msg.id, ValueError("later")) is Action.RETRY
    age(r, stream_name, entry, 31_000)
    r.xdel(stream_name, entry)
    time.sleep(0.01)
    assert consumer.read_messages(block=0) == []
    assert consumer.stats.lost == 1
    assert pending_rows(r, stream_name) == {}
    assert due_rows(r, stream_name) == {}


# -- a worker killed while its retry waits -------------------------------------------------

WORKER = textwrap.dedent(
    """
    import sys
    from datetime import timedelta

    from faults.ledger import HandledLog
    from streamlab.backoff import Backoff
    from streamlab.client import RedisStreamsClient, connect
    from streamlab.consumer import Consumer, ConsumerConfig

    url, stream, log, failing = sys.argv[1], sys.argv[2], HandledLog(sys.argv[3]), sys.argv[4:]

    def handler(msg):
        if msg.id in failing and msg.delivery_count == 1:
            raise TimeoutError("upstream timed out")
        log.record(msg.id)

    config = ConsumerConfig(
        stream=stream,
        group="g",
        consumer="doomed",
        claim_min_idle=timedelta(seconds=0.5),
        block_duration=timedelta(seconds=0.2),
        backoff=Backoff(initial=timedelta(seconds=3), first_immediate=False),
    )
    Consumer(RedisStreamsClient(connect(url)), config).run(handler)
    """
)


def test_worker_sigkilled_while_its_retries_wait_another_retries_them_when_due(
    redis_url: str,
    streams_client: RedisStreamsClient,
    stream_name: str,
    tmp_path: Path,
    fault_report: Any,
) -> None:
    r = streams_client.redis
    ids = add(streams_client, stream_name, 6)
    failing = ids[1::3]
    streams_client.ensure_group(stream_name, "g")
    log = HandledLog(tmp_path / "handled.log")
    tests_dir = str(Path(__file__).parent)
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, redis_url, stream_name, str(log.path), *failing],
        cwd=tests_dir,
        env={**os.environ, "PYTHONPATH": tests_dir},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def parked() -> bool:
            rows = pending_rows(r, stream_name)
            return set(rows) == set(failing) and all(
                o == RETRY_CONSUMER for o, _, _ in rows.values()
            )

        wait_for(parked, timeout=20, what="the worker to park its retries")
    finally:
        worker.send_signal(signal.SIGKILL)
        _, stderr = worker.communicate(timeout=10)
    assert worker.returncode == -signal.SIGKILL, stderr
    killed_at = time.time()
    due = due_rows(r, stream_name)
    assert set(due) == set(failing)
    assert all(killed_at < at / 1000 for at in due.values())  # killed before any was due

    seen: list[tuple[str, int, float]] = []
    stop = threading.Event()

    def handler(msg: StreamMessage) -> None:
        seen.append((msg.id, msg.delivery_count, time.time()))
        log.record(msg.id)
        if len(seen) == len(failing):
            stop.set()

    cfg = config(stream_name, consumer="rescuer", claim_min_idle=timedelta(seconds=0.5))
    rescuer = Consumer(RedisStreamsClient(connect(redis_url)), cfg)
    runner = threading.Thread(
        target=rescuer.run, args=(handler,), kwargs={"handle_signals": False, "stop_event": stop}
    )
    runner.start()
    stop.wait(timeout=3.0 + 10)
    stop.set()
    runner.join(timeout=10)
    assert not runner.is_alive()

    # Each retried once, when due (not at claim_min_idle), as attempt 2.
    assert sorted((i, n) for i, n, _ in seen) == sorted((i, 2) for i in failing)
    for entry_id, _, at in seen:
        assert due[entry_id] / 1000 - EARLY <= at <= due[entry_id] / 1000 + LATE
    assert log.counts() == Counter(ids)
    assert rescuer.stats.reclaimed == 0  # retries, not messages taken from a dead consumer
    assert due_rows(r, stream_name) == {}
    fault_report(
        scenario="retry waiting while its worker is SIGKILLed",
        fault="SIGKILL with retries parked (backoff 3 s > claim_min_idle 0.5 s)",
        result=ledger_check(r, stream_name, "g", ids, log.counts()),
        client=r,
    )
