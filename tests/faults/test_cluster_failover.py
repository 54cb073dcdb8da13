"""Fault scenario 22: a 3-master cluster with one replica each; the master serving the stream
is SIGKILLed while producers and a consumer run, its replica is promoted, and the consumer
recovers and finishes.

A dead master cannot be asked to CLUSTER FAILOVER: its replica takes over on its own once
``cluster-node-timeout`` (1 s here) has passed without an answer.

What asynchronous replication can lose: a write is acknowledged by the master before its
replica has it. An XADD acked just before the kill may be missing on the promoted replica (the
event is lost: its id was returned, but it is in neither the stream nor the DLQ), and an XACK
or a retry hand-over may be missing too (the entry is pending again and is handled twice, which
at-least-once allows). ``WAIT 1 <ms>`` after a write narrows that window (the write is on the
replica when WAIT returns 1), it does not make a failover lossless. So the row is recorded with
``expect_lost=True``, and the test asserts what does hold: whatever the new master has is
handled or dead-lettered exactly once, nothing stays pending, and the consumer never stops.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from faults.ledger import ledger_check
from streamlab.backoff import Backoff
from streamlab.client import RedisStreamsClient
from streamlab.consumer import Consumer, ConsumerConfig
from streamlab.embedded import EmbeddedCluster
from streamlab.events import StreamEvent, StreamMessage, encode_event
from streamlab.keys import dlq_key

pytestmark = pytest.mark.fault

EVENTS = 400
KILL_AT = 200
NOTE = (
    "asynchronous replication: XADDs, XACKs and retry hand-overs acked by the killed master "
    "but not yet on its replica are lost with it (events lost, entries handled again); "
    "WAIT narrows the window, it does not close it"
)


@pytest.fixture
def failover_cluster() -> Any:
    with EmbeddedCluster(masters=3, replicas=1, node_timeout_ms=1000) as nodes:
        yield nodes


def produce_one(r: RedisCluster, stream: str, n: int, deadline: float) -> str | None:
    """XADD one event, retrying through the failover; the id once the add returned one.

    An add that raised may or may not have been written: only returned ids are counted as
    produced, as the ledger defines it.
    """
    event = StreamEvent(
        id=f"evt-{n}", event_type="bad" if n % 10 == 0 else "push", payload={"n": n}
    )
    fields: dict[Any, Any] = dict(encode_event(event))
    while time.monotonic() < deadline:
        try:
            entry_id = r.xadd(stream, fields)
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterError):
            time.sleep(0.1)
            continue
        except redis.ResponseError as exc:  # CLUSTERDOWN, TRYAGAIN while slots move
            if not str(exc).startswith(("CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN")):
                raise
            time.sleep(0.1)
            continue
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    return None


def test_a_killed_master_is_replaced_and_the_consumer_finishes(
    failover_cluster: EmbeddedCluster, fault_report: Any
) -> None:
    cluster = failover_cluster
    stream = f"{{orders-{uuid.uuid4().hex[:8]}}}"
    producer = cluster.client()
    worker = RedisStreamsClient(cluster.client())
    cfg = ConsumerConfig(
        stream=stream,
        group="g",
        consumer="c1",
        max_retries=1,
        backoff=Backoff(initial=timedelta(milliseconds=50), max=timedelta(milliseconds=100)),
        # Entries whose XACK died with the master are pending again: taken back after 2 s.
        claim_min_idle=timedelta(seconds=2),
        block_duration=timedelta(milliseconds=200),
    )
    worker.ensure_group(stream, "g")
    handled: Counter[str] = Counter()
    lock = threading.Lock()

    def handle(msg: StreamMessage) -> None:
        with lock:
            handled[msg.id] += 1
        if msg.event is not None and msg.event.event_type == "bad":
            raise ValueError("bad event")
        time.sleep(0.002)  # so the kill lands while the consumer is busy

    stop = threading.Event()
    crashed: list[BaseException] = []
    consumer = Consumer(worker, cfg)

    def run() -> None:
        try:
            consumer.run(handle, handle_signals=False, stop_event=stop)
        except BaseException as exc:  # a crash is the failure this scenario looks for
            crashed.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    produced: list[str] = []
    killed = None
    for n in range(EVENTS):
        if n == KILL_AT:
            killed = cluster.kill_master_of(stream)
            killed_at = time.monotonic()
        entry_id = produce_one(producer, stream, n, deadline)
        assert entry_id is not None, f"no add succeeded within 60 s (event {n})"
        produced.append(entry_id)
    assert killed is not None
    promoted = cluster.wait_failover(stream, timeout=30)
    assert promoted.port != killed.port
    assert promoted in cluster.replicas  # the replica of the killed master took over
    failover_s = time.monotonic() - killed_at

    r = cluster.client()
    dlq = dlq_key(stream)

    def finished() -> bool:
        with lock:
            seen = dict(handled)
        result = ledger_check(r, stream, "g", produced, seen)
        survivors_missing = result.lost - len(absent_from_stream(r, stream, result.lost_ids))
        return survivors_missing == 0 and result.pending == 0

    wait_until = time.monotonic() + 60
    while not finished():
        assert not crashed, f"the consumer stopped: {crashed[0]!r}"
        assert time.monotonic() < wait_until, "the consumer did not finish within 60 s"
        time.sleep(0.2)
    stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert not crashed, f"the consumer stopped: {crashed[0]!r}"

    with lock:
        seen = dict(handled)
    result = ledger_check(r, stream, "g", produced, seen, dlq=dlq)
    # A lost event is one the new master never had: it went with the killed master.
    assert absent_from_stream(r, stream, result.lost_ids) == result.lost_ids
    assert result.dlq_doubles == 0
    assert result.pending == 0
    bad = [i for n, i in enumerate(produced) if n % 10 == 0 and i not in result.lost_ids]
    assert result.dlq == len(bad)
    assert consumer.stats.acked + consumer.stats.dead_lettered >= result.events - result.lost
    new_master = redis.Redis(host="127.0.0.1", port=promoted.port)
    fault_report(
        scenario="22 cluster failover",
        fault=f"SIGKILL of the master serving the stream at event {KILL_AT}; replica "
        f"promoted after {failover_s:.1f} s",
        result=result,
        client=new_master,
        expect_lost=True,
        note=NOTE,
    )
    new_master.close()
    for client in (producer, worker.redis, r):
        client.close()


def absent_from_stream(r: RedisCluster, stream: str, ids: list[str]) -> list[str]:
    """Those of ``ids`` that the stream does not hold."""
    return [i for i in ids if not r.xrange(stream, i, i, count=1)]
