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

import os
import signal
import threading
import time
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

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
# Seconds between adds, so that producing spans the failover (~2 s after the kill).
PACE = 0.01
NOTE = (
    "asynchronous replication: XADDs, XACKs and retry hand-overs acked by the killed master "
    "but not yet on its replica are lost with it (events lost, entries handled again); "
    "WAIT narrows the window, it does not close it"
)


WHO = {"owner": "the master serving the stream", "other": "another master"}


def other_key(cluster: EmbeddedCluster, stream: str) -> str:
    """A key served by a master other than ``stream``'s."""
    owner = cluster.master_of(stream).port
    return next(k for k in (f"{{k{i}}}" for i in range(1000)) if cluster.master_of(k).port != owner)


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


@pytest.mark.parametrize("victim", ["owner", "other"])
def test_a_killed_master_is_replaced_and_the_consumer_finishes(
    failover_cluster: EmbeddedCluster,
    fault_report: Any,
    victim: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``owner``: the master serving the stream dies. ``other``: another master dies; until
    its replica is promoted every node answers CLUSTERDOWN (``cluster-require-full-coverage``),
    so the stream's own, live master refuses the consumer too.

    The worker's cluster client makes no retries of its own (redis-py's default retries, a few
    seconds of backoff, would hide a short failover): the consumer itself must wait it out, as
    it must when a failover outlasts those retries (``cluster-node-timeout`` is 15 s by
    default).
    """
    cluster = failover_cluster
    stream = f"{{orders-{uuid.uuid4().hex[:8]}}}"
    killed_key = stream if victim == "owner" else other_key(cluster, stream)
    producer = cluster.client()
    worker = RedisStreamsClient(cluster.client(retry=Retry(NoBackoff(), 0)))
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

    stop = threading.Event()
    crashed: list[BaseException] = []
    consumer = Consumer(worker, cfg)
    produced: list[str] = []
    half = threading.Event()

    def consume() -> None:
        try:
            consumer.run(handle, handle_signals=False, stop_event=stop)
        except BaseException as exc:  # a crash is the failure this scenario looks for
            crashed.append(exc)

    def produce() -> None:
        deadline = time.monotonic() + 60
        for n in range(EVENTS):
            entry_id = produce_one(producer, stream, n, deadline)
            if entry_id is None:
                return  # the main thread reports the shortfall
            produced.append(entry_id)
            if n + 1 == KILL_AT:
                half.set()
            time.sleep(PACE)

    threads = [threading.Thread(target=f, daemon=True) for f in (consume, produce)]
    for thread in threads:
        thread.start()
    assert half.wait(timeout=30), "the first half was not produced within 30 s"
    killed = cluster.kill_master_of(killed_key)
    killed_at = time.monotonic()
    promoted = cluster.wait_failover(killed_key, timeout=30)
    failover_s = time.monotonic() - killed_at
    assert promoted.port != killed.port
    assert promoted in cluster.replicas  # the replica of the killed master took over
    threads[1].join(timeout=60)
    assert len(produced) == EVENTS, f"only {len(produced)} adds succeeded within 60 s"

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
    threads[0].join(timeout=30)
    assert not threads[0].is_alive()
    assert not crashed, f"the consumer stopped: {crashed[0]!r}"
    # The fault reached the consumer (a dead connection, or CLUSTERDOWN), and it waited.
    waits = [rec.getMessage() for rec in caplog.records if rec.name == "streamlab.consumer"]
    assert waits, "the consumer never met the failover"

    with lock:
        seen = dict(handled)
    result = ledger_check(r, stream, "g", produced, seen, dlq=dlq)
    # A lost event is one the new master never had: it went with the killed master.
    assert absent_from_stream(r, stream, result.lost_ids) == result.lost_ids
    assert result.dlq_doubles == 0
    assert result.pending == 0
    bad = [i for n, i in enumerate(produced) if n % 10 == 0 and i not in result.lost_ids]
    assert result.dlq == len(bad)
    serving = cluster.master_of(stream)
    new_master = redis.Redis(host="127.0.0.1", port=serving.port)
    fault_report(
        scenario="22 cluster failover",
        fault=f"SIGKILL of {WHO[victim]} after {KILL_AT} adds; its replica promoted "
        f"{failover_s:.1f} s later",
        result=result,
        client=new_master,
        # Only the killed master's own writes can be lost; another master holds none of them.
        expect_lost=victim == "owner",
        note=NOTE,
    )
    new_master.close()
    for client in (producer, worker.redis, r):
        client.close()


def absent_from_stream(r: RedisCluster, stream: str, ids: list[str]) -> list[str]:
    """Those of ``ids`` that the stream does not hold."""
    return [i for i in ids if not r.xrange(stream, i, i, count=1)]


def test_adds_acked_but_not_replicated_are_what_a_failover_loses(
    failover_cluster: EmbeddedCluster, fault_report: Any
) -> None:
    """The loss made certain: the replica is frozen (SIGSTOP) and its link cut (CLIENT KILL
    TYPE replica) while the master acks 10 more adds; WAIT reports them unreplicated; then the
    master is killed and the replica promoted. Exactly those 10 are lost; everything the new
    master holds is handled, nothing pending."""
    cluster = failover_cluster
    stream = f"{{orders-{uuid.uuid4().hex[:8]}}}"
    r = cluster.client()
    owner = cluster.master_of(stream)
    replica = cluster.replicas[cluster.masters.index(owner)]
    node = r.get_node_from_key(stream)

    def add(n: int) -> str:
        event = StreamEvent(id=f"evt-{n}", event_type="push", payload={"n": n})
        return r.xadd(stream, dict(encode_event(event))).decode()

    def replicated(timeout_ms: int) -> int:
        """WAIT on the stream's master: how many replicas have every write acked so far."""
        return int(r.execute_command("WAIT", 1, timeout_ms, target_nodes=node))

    safe = [add(n) for n in range(50)]
    assert replicated(5000) == 1  # these are on the replica
    assert replica.pid is not None
    # Frozen, and cut off: what the master had sent already sits in the replica's socket and
    # would still arrive; from now on nothing more does.
    os.kill(replica.pid, signal.SIGSTOP)
    try:
        master = redis.Redis(host="127.0.0.1", port=owner.port)
        assert master.client_kill_filter(_type="replica") == 1
        master.close()
        unreplicated = [add(n) for n in range(50, 60)]
        assert replicated(200) == 0  # acked, yet on the master alone
        cluster.kill_master_of(stream)
    finally:
        os.kill(replica.pid, signal.SIGCONT)
    promoted = cluster.wait_failover(stream, timeout=30)
    assert promoted.port == replica.port

    handled: Counter[str] = Counter()
    cfg = ConsumerConfig(stream=stream, group="g", consumer="c1")
    worker = RedisStreamsClient(cluster.client())
    Consumer(worker, cfg).run(lambda m: handled.update([m.id]), burst=True, handle_signals=False)
    result = ledger_check(r, stream, "g", safe + unreplicated, handled)
    assert sorted(result.lost_ids) == sorted(unreplicated)
    assert result.handled == len(safe)
    assert result.pending == 0
    new_master = redis.Redis(host="127.0.0.1", port=promoted.port)
    fault_report(
        scenario="22 cluster failover",
        fault="replica frozen and cut off, 10 adds acked by the master alone (WAIT 1 says 0), "
        "master SIGKILLed, replica promoted",
        result=result,
        client=new_master,
        expect_lost=True,
        note=NOTE + "; here exactly the 10 unreplicated adds are lost",
    )
    new_master.close()
    worker.redis.close()
    r.close()
