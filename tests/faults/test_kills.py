"""Scenarios 1, 4 and 10: worker and replayer processes SIGKILLed at the worst moments.

1. workers SIGKILLed mid-batch, again and again, each replaced by a new one;
4. a poison message that kills every worker that takes it: it ends in the DLQ;
10. a worker SIGKILLed while it dead-letters, and a replayer SIGKILLed half-way through a
   large replay, then run again.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from test_replay_processes import start as start_replayer

from faults.common import GROUP, FaultReport, add, drained, handled, kill, spawn, stop, wait_for
from faults.ledger import HandledLog, ledger_check
from streamlab.client import RedisStreamsClient
from streamlab.consumer import Consumer, ConsumerConfig
from streamlab.errors import Reject
from streamlab.events import StreamEvent, StreamMessage
from streamlab.replay import replay_dlq

pytestmark = pytest.mark.fault

BATCH = 10


def test_workers_sigkilled_mid_batch_repeatedly(
    redis_url: str,
    streams_client: RedisStreamsClient,
    redis_client: redis.Redis,
    stream_name: str,
    tmp_path: Path,
    fault_report: FaultReport,
) -> None:
    ids = add(streams_client, stream_name, 600)
    streams_client.ensure_group(stream_name, GROUP)
    log = HandledLog(tmp_path / "handled")
    args = [
        "--out", str(log.path), "--sleep", "0.005", "--batch-size", str(BATCH),
        "--claim-min-idle", "0.5", "--backoff-initial", "0.1", "--max-retries", "3",
        "--block-duration", "0.2",
    ]  # fmt: skip
    workers = [spawn(redis_url, stream_name, f"w{i}", "slow", *args) for i in range(2)]
    kills = 0
    for n in range(6):
        seen = sum(log.counts().values())
        wait_for(
            lambda s=seen: sum(log.counts().values()) >= s + 2 * BATCH,
            what="progress",
            alive=workers,
        )
        kill(workers.pop(0))  # the oldest: it is handling a batch (5 ms a message)
        kills += 1
        workers.append(spawn(redis_url, stream_name, f"w{n + 2}", "slow", *args))
    assert redis_client.xpending(stream_name, GROUP)["pending"] > 0  # a kill left a batch
    wait_for(lambda: drained(redis_client, stream_name), timeout=30, what="all settled")
    for proc in workers:
        stop(proc)

    result = ledger_check(redis_client, stream_name, GROUP, ids, log.counts())
    # At least once: only what a killed worker held may have run twice.
    assert result.duplicated <= kills * BATCH
    fault_report(
        scenario="1 workers SIGKILLed mid-batch",
        fault=f"{kills} workers SIGKILLed, each holding a batch of {BATCH}, and replaced",
        result=result,
        client=redis_client,
    )


def test_poison_message_that_kills_every_worker_ends_in_the_dlq(
    redis_url: str,
    streams_client: RedisStreamsClient,
    redis_client: redis.Redis,
    stream_name: str,
    tmp_path: Path,
    fault_report: FaultReport,
) -> None:
    good = add(streams_client, stream_name, 3)
    [poison] = add(streams_client, stream_name, 1, event_type="poison")
    good += add(streams_client, stream_name, 3)
    streams_client.ensure_group(stream_name, GROUP)
    out = tmp_path / "handled"
    args = ["--burst", "--batch-size", "1", "--max-retries", "1", "--claim-min-idle", "0.5"]
    codes: list[int] = []
    for n in range(6):
        worker = spawn(redis_url, stream_name, f"w{n}", "poison", "--out", str(out), *args)
        worker.communicate(timeout=30)
        codes.append(worker.returncode)
        if drained(redis_client, stream_name):
            break
        time.sleep(1.0)  # 2x claim_min_idle: the dead worker's message is claimable

    # Delivery 1 and 2 (max_retries=1) each killed their worker; the 3rd dead-letters it.
    assert codes == [-signal.SIGKILL, -signal.SIGKILL, 0]
    [dead] = streams_client.read_dlq(stream_name)
    assert dead.failure is not None
    assert (dead.failure.source_id, dead.failure.error_type) == (poison, "ConsumerDied")
    assert (dead.failure.attempts, dead.failure.consumer) == (3, "w2")
    result = ledger_check(redis_client, stream_name, GROUP, [*good, poison], handled(out))
    assert (result.dlq, result.duplicated) == (1, 0)
    fault_report(
        scenario="4 poison message",
        fault="an entry whose handler SIGKILLs its worker (max_retries=1)",
        result=result,
        client=redis_client,
    )


def test_worker_sigkilled_while_dead_lettering(
    redis_url: str,
    streams_client: RedisStreamsClient,
    redis_client: redis.Redis,
    stream_name: str,
    tmp_path: Path,
    fault_report: FaultReport,
) -> None:
    # 1,500 entries of 4 kB that all fail: the workers spend their time dead-lettering.
    blob = {"blob": "x" * 4000}
    events = (StreamEvent(event_type="fail", payload=blob) for _ in range(1500))
    ids = streams_client.add_many(stream_name, events)
    streams_client.ensure_group(stream_name, GROUP)
    dlq = streams_client.dlq_stream(stream_name)
    args = ["--batch-size", "100", "--claim-min-idle", "0.5", "--backoff-initial", "0.1"]
    kills = 0
    for n in range(3):
        before = redis_client.xlen(dlq)
        worker = spawn(redis_url, stream_name, f"w{n}", "reject", *args)
        wait_for(lambda b=before: redis_client.xlen(dlq) > b, what="dead-lettering", alive=[worker])
        kill(worker)
        kills += 1
    assert redis_client.xlen(dlq) < len(ids)  # the kills left work behind
    final = spawn(redis_url, stream_name, "last", "reject", *args)
    wait_for(
        lambda: drained(redis_client, stream_name),
        timeout=30,
        what="all dead-lettered",
        alive=[final],
    )
    stop(final)

    result = ledger_check(redis_client, stream_name, GROUP, ids, Counter())
    assert result.dlq == len(ids)
    fault_report(
        scenario="10 kill while dead-lettering",
        fault=f"{kills} workers SIGKILLed while dead-lettering batches of 100 (4 kB entries)",
        result=result,
        client=redis_client,
    )


def test_replayer_sigkilled_half_way_then_rerun(
    redis_url: str,
    streams_client: RedisStreamsClient,
    redis_client: redis.Redis,
    stream_name: str,
    tmp_path: Path,
    fault_report: FaultReport,
) -> None:
    # 2,000 events fail once and are dead-lettered by a real consumer.
    ids = add(streams_client, stream_name, 2000)
    seen: Counter[str] = Counter()

    def handler(msg: StreamMessage) -> None:
        if "streamlab:replay_of" not in msg.fields:
            raise Reject("fails until replayed")
        seen[msg.id] += 1

    cfg = ConsumerConfig(stream=stream_name, group=GROUP, consumer="c", batch_size=200)
    Consumer(streams_client, cfg).run(handler, burst=True, handle_signals=False)
    dlq = streams_client.dlq_stream(stream_name)
    source_of = {
        i.decode(): f[b"dlq_source_id"].decode() for i, f in redis_client.xrange(dlq, "-", "+")
    }
    assert sorted(source_of.values()) == sorted(ids)

    go = tmp_path / "go"
    proc = start_replayer(redis_url, stream_name, go, rate="1500", batch=500)
    go.touch()
    wait_for(lambda: redis_client.xlen(stream_name) >= len(ids) + 300, what="the replay")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    left = redis_client.xlen(dlq)
    assert 0 < left <= len(ids) - 300  # really killed half-way
    report = replay_dlq(streams_client, stream_name)
    assert len(report.replayed) == left
    assert report.ok
    Consumer(streams_client, cfg).run(handler, burst=True, handle_signals=False)

    # Each replayed entry names its DLQ entry (streamlab:replay_of), which names the original id.
    replays = Counter(
        f[b"streamlab:replay_of"].decode()
        for _, f in redis_client.xrange(stream_name, "-", "+")
        if b"streamlab:replay_of" in f
    )
    assert set(replays.values()) == {1}  # no event injected twice
    by_source: Counter[str] = Counter()
    for entry_id, fields in redis_client.xrange(stream_name, "-", "+"):
        if b"streamlab:replay_of" in fields:
            by_source[source_of[fields[b"streamlab:replay_of"].decode()]] += seen[entry_id.decode()]
    result = ledger_check(redis_client, stream_name, GROUP, ids, by_source)
    assert result.dlq == 0
    fault_report(
        scenario="10 kill during replay",
        fault="replayer process SIGKILLed after 300 of 2,000 events, then run again",
        result=result,
        client=redis_client,
    )
