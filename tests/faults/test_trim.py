"""Scenario 17: streamlab's own trims never remove what a consumer group still needs.

A producer's ``maxlen`` and the DLQ's ``dlq_maxlen`` / ``dlq_retention`` trim streams; none of
them may remove an entry a group has not been given yet or still holds pending
(``lua/safe_trim.lua``), and the retention cut follows the server's clock.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, tzinfo

import pytest
import redis

import streamlab.client
from faults.ledger import ledger_check
from streamlab.client import RedisStreamsClient, connect
from streamlab.consumer import Consumer, ConsumerConfig
from streamlab.errors import Reject
from streamlab.events import StreamEvent, StreamMessage

pytestmark = pytest.mark.fault

MAXLEN = 20
SLACK = 2  # min(100, MAXLEN // 10): the trim waits until the stream is this far over


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll with a wide limit: a stuck run fails, a slow machine does not."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def quick_recheck(monkeypatch: pytest.MonkeyPatch) -> None:
    # A held-back trim is tried again after this long (1 s in production).
    monkeypatch.setattr(streamlab.client, "TRIM_RECHECK", 0.05)


class Worker:
    """A consumer of one group in a thread, on its own connection, counting what it handled."""

    def __init__(self, url: str, stream: str, group: str, delay: float = 0.0) -> None:
        self.redis = connect(url)
        self.handled: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.delay = delay
        config = ConsumerConfig(
            stream=stream,
            group=group,
            consumer=f"{group}-worker",
            block_duration=timedelta(milliseconds=50),
            batch_size=10,
        )
        self.consumer = Consumer(RedisStreamsClient(self.redis), config)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.consumer.run(self.handle, handle_signals=False, stop_event=self.stop)

    def handle(self, msg: StreamMessage) -> None:
        if self.delay:
            time.sleep(self.delay)  # a slow handler: this group lags, by design
        with self.lock:
            self.handled[msg.id] += 1

    def count(self) -> int:
        with self.lock:
            return len(self.handled)

    def __enter__(self) -> Worker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "worker did not stop"
        self.redis.close()


def events(n: int) -> Iterator[StreamEvent]:
    return (StreamEvent(event_type="push", payload={"n": i}) for i in range(n))


def test_a_lagging_group_gets_every_event_under_a_producer_maxlen(
    streams_client: RedisStreamsClient,
    redis_client: redis.Redis,
    redis_url: str,
    stream_name: str,
    fault_report: Callable[..., None],
) -> None:
    r = redis_client
    for group in ("fast", "lagging"):
        streams_client.ensure_group(stream_name, group, "0")
    produced: list[str] = []
    with Worker(redis_url, stream_name, "fast") as fast:
        # Phase 1: the lagging group has read nothing; one by one, then in batches.
        for event in events(100):
            produced.append(streams_client.add_to_stream(stream_name, event, maxlen=MAXLEN))
        # It takes 10 and holds them, unacked, while the producer goes on.
        held = streams_client.read_from_stream(stream_name, "lagging", "lag-1", 10)
        assert [m.id for m in held] == produced[:10]
        produced += streams_client.add_many(stream_name, events(200), maxlen=MAXLEN, batch_size=25)
        wait_for(lambda: fast.count() == len(produced), 60, "the fast group to catch up")
        # Everything the lagging group holds or has not been given is still there.
        assert [i.decode() for i, _ in r.xrange(stream_name)] == produced
        for msg in held:
            streams_client.ack_message(stream_name, "lagging", msg.id)
        lagging_handled = Counter(m.id for m in held)

        # Phase 2: the lagging group consumes slowly while the producer adds more.
        with Worker(redis_url, stream_name, "lagging", delay=0.002) as lagging:
            for event in events(200):
                produced.append(streams_client.add_to_stream(stream_name, event, maxlen=MAXLEN))
            wait_for(lambda: fast.count() == len(produced), 60, "the fast group")
            wait_for(lambda: lagging.count() + len(held) >= len(produced), 120, "the lagging group")
        lagging_handled += lagging.handled

    # Both groups are done: the next add trims the stream back to its cap.
    time.sleep(0.1)  # past TRIM_RECHECK (0.05 s), so a held-back trim is tried again
    last = streams_client.add_to_stream(stream_name, StreamEvent(event_type="x"), maxlen=MAXLEN)
    assert r.xlen(stream_name) <= MAXLEN + SLACK
    assert r.xrevrange(stream_name, count=1)[0][0].decode() == last

    fast_result = ledger_check(r, stream_name, "fast", produced, fast.handled)
    assert fast_result.lost == 0
    result = ledger_check(r, stream_name, "lagging", produced, lagging_handled)
    fault_report(
        scenario="17 trim with a lagging group",
        fault=f"producer maxlen={MAXLEN}; one group holds 10 pending and lags by 300",
        result=result,
        client=r,
    )
    assert result.handled == len(produced) == 500


def test_dlq_trims_keep_what_a_dlq_group_has_not_been_given(
    streams_client: RedisStreamsClient, redis_client: redis.Redis, stream_name: str
) -> None:
    r = redis_client
    dlq = streams_client.dlq_stream(stream_name)
    streams_client.ensure_group(dlq, "alerts", "0")  # someone consumes the DLQ itself
    produced = streams_client.add_many(stream_name, events(40))

    def reject(msg: StreamMessage) -> None:
        raise Reject("no")

    config = ConsumerConfig(
        stream=stream_name,
        group="g",
        consumer="c",
        block_duration=timedelta(milliseconds=50),
        dlq_maxlen=5,
        dlq_retention=timedelta(seconds=1),
    )
    stats = Consumer(streams_client, config).run(reject, burst=True, handle_signals=False)
    assert stats.dead_lettered == 40
    time.sleep(1.5)  # past the retention (1 s), a wide margin: both ends use the server clock
    produced.append(streams_client.add_to_stream(stream_name, StreamEvent(event_type="late")))
    Consumer(streams_client, config).run(reject, burst=True, handle_signals=False)
    # Neither the cap nor the retention removed what "alerts" has not read.
    assert r.xlen(dlq) == 41
    result = ledger_check(r, stream_name, "g", produced, Counter())
    assert (result.lost, result.dlq, result.dlq_doubles, result.pending) == (0, 41, 0, 0)

    # Once "alerts" has read and acked them, the next dead letter trims the DLQ: the 40
    # older than the retention go ("late" may stay: it is younger than 1 s on a slow run).
    read = r.xreadgroup("alerts", "a", {dlq: ">"}, count=100)
    r.xack(dlq, "alerts", *[entry_id for entry_id, _ in read[0][1]])
    last = streams_client.add_to_stream(stream_name, StreamEvent(event_type="last"))
    Consumer(streams_client, config).run(reject, burst=True, handle_signals=False)
    kept = [f[b"dlq_source_id"].decode() for _, f in r.xrange(dlq)]
    assert kept in ([produced[-1], last], [last])


class AheadClock(datetime):
    """The worker's clock, two days ahead of the server's."""

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> AheadClock:
        return cls.fromtimestamp(time.time() + 2 * 86_400, tz)


def test_dlq_retention_follows_the_server_clock_and_ids_in_the_future(
    streams_client: RedisStreamsClient,
    redis_client: redis.Redis,
    stream_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker clock ahead of the server's by more than the retention used to trim each
    dead letter as soon as it was written. And a DLQ whose ids run ahead of the clock (its
    last id in the future, as after a server clock set back): new dead letters get ids past
    it, and retention keeps them."""
    import streamlab.policy

    monkeypatch.setattr(streamlab.policy, "datetime", AheadClock)
    r = redis_client
    dlq = streams_client.dlq_stream(stream_name)
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    week_ago = r.xadd(dlq, {"dlq_error_type": "Old"}, id=f"{now_ms - 7 * 86_400_000}-0")
    future = r.xadd(dlq, {"dlq_error_type": "Future"}, id=f"{now_ms + 2 * 3_600_000}-0")
    produced = streams_client.add_many(stream_name, events(3))

    def reject(msg: StreamMessage) -> None:
        raise Reject("no")

    config = ConsumerConfig(
        stream=stream_name,
        group="g",
        consumer="c",
        block_duration=timedelta(milliseconds=50),
        dlq_retention=timedelta(hours=1),
    )
    Consumer(streams_client, config).run(reject, burst=True, handle_signals=False)
    ids = [i for i, _ in r.xrange(dlq)]
    assert week_ago not in ids  # older than the retention by the server's clock: trimmed
    assert ids[0] == future
    assert len(ids) == 4
    result = ledger_check(r, stream_name, "g", produced, Counter())
    assert (result.lost, result.dlq, result.dlq_doubles, result.pending) == (0, 3, 0, 0)


def test_a_dead_letter_too_big_for_lua_trims_the_dlq_as_safely(
    streams_client: RedisStreamsClient, redis_client: redis.Redis, stream_name: str
) -> None:
    """Entries of ~4,000+ fields are dead-lettered with WATCH/MULTI, then trimmed by the same
    safe trim after EXEC."""
    r = redis_client
    dlq = streams_client.dlq_stream(stream_name)
    streams_client.ensure_group(dlq, "alerts", "0")
    earlier = [r.xadd(dlq, {"dlq_error_type": "E", "n": str(i)}) for i in range(3)]
    big = {"event_type": "push", **{f"f{i}": "v" for i in range(4000)}}
    produced = [streams_client.add_to_stream(stream_name, big)]

    def reject(msg: StreamMessage) -> None:
        raise Reject("no")

    config = ConsumerConfig(
        stream=stream_name,
        group="g",
        consumer="c",
        block_duration=timedelta(milliseconds=50),
        dlq_maxlen=1,
    )
    Consumer(streams_client, config).run(reject, burst=True, handle_signals=False)
    ids = [i for i, _ in r.xrange(dlq)]
    assert ids[:3] == earlier  # "alerts" has read none of them: all kept
    assert len(ids) == 4
    read = r.xreadgroup("alerts", "a", {dlq: ">"}, count=10)
    r.xack(dlq, "alerts", *[entry_id for entry_id, _ in read[0][1]])
    produced.append(streams_client.add_to_stream(stream_name, big))
    Consumer(streams_client, config).run(reject, burst=True, handle_signals=False)
    [(_, newest)] = r.xrange(dlq)
    assert newest[b"dlq_source_id"].decode() == produced[-1]
    assert len(newest) == 4001 + 9  # the whole entry, plus its failure fields
    # The first one was capped away by dlq_maxlen=1 once "alerts" had it: that is the cap.
    result = ledger_check(r, stream_name, "g", produced[-1:], Counter())
    assert (result.lost, result.dlq_doubles, result.pending) == (0, 0, 0)


def test_a_trim_that_fails_never_fails_the_write_it_follows(
    redis_client: redis.Redis, stream_name: str
) -> None:
    """A user without +time (the retention's server clock) still dead-letters; one without
    +evalsha still produces, uncapped rather than capped unsafely."""
    r = redis_client
    where = r.connection_pool.connection_kwargs
    address = f"{where['host']}:{where['port']}"
    name = f"trim-{uuid.uuid4().hex[:8]}"
    rights = ["+@stream", "+@connection", "+evalsha", "+script|load"]
    rights += ["+zadd", "+zrem", "+zmscore", "+zremrangebyscore"]  # retry due times
    r.acl_setuser(name, enabled=True, passwords=["+pw"], keys=["~*"], commands=rights)
    producer = f"{name}-p"
    r.acl_setuser(producer, enabled=True, passwords=["+pw"], keys=["~*"], commands=["+xadd"])
    try:
        worker = connect(f"redis://{name}:pw@{address}")
        client = RedisStreamsClient(worker)
        produced = client.add_many(stream_name, events(3))
        config = ConsumerConfig(
            stream=stream_name,
            group="g",
            consumer="c",
            block_duration=timedelta(milliseconds=50),
            dlq_retention=timedelta(hours=1),
        )

        def reject(msg: StreamMessage) -> None:
            raise Reject("no")

        stats = Consumer(client, config).run(reject, burst=True, handle_signals=False)
        assert stats.dead_lettered == 3
        result = ledger_check(r, stream_name, "g", produced, Counter())
        assert (result.lost, result.dlq, result.dlq_doubles, result.pending) == (0, 3, 0, 0)
        worker.close()

        plain = connect(f"redis://{producer}:pw@{address}")
        capped = RedisStreamsClient(plain)
        more = [capped.add_to_stream(stream_name, {"event_type": "x"}, maxlen=2) for _ in range(4)]
        assert [i.decode() for i, _ in r.xrange(stream_name)][-4:] == more
        plain.close()
    finally:
        r.acl_deluser(name, producer)
