"""Scenarios 7, 8, 18 and 19: what happens to the pending list and the group itself.

7. entries deleted (XDEL) or trimmed (XTRIM) while pending, held by a dead consumer or
   waiting for a retry: counted as lost by the consumer, never a crash;
8. the group (XGROUP DESTROY) or the whole stream (DEL) deleted under a running worker
   process: it warns, creates the group again and goes on;
18. consumer churn: 100 restarts under new names keep the consumer list bounded, and no
    pending entry is orphaned;
19. a worker restarted under the same name takes back its own pending entries first.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from faults.common import GROUP, FaultReport, add, drained, handled, kill, spawn, stop, wait_for
from faults.ledger import ledger_check
from streamlab.client import RedisStreamsClient
from streamlab.consumer import Consumer, ConsumerConfig, RunStats
from streamlab.events import StreamMessage

pytestmark = pytest.mark.fault


def run_until_drained(
    client: RedisStreamsClient, config: ConsumerConfig, seen: Counter[str], timeout: float = 15
) -> RunStats:
    """Run a consumer in a thread until the group has nothing pending or left to read."""
    stop_event = threading.Event()
    consumer = Consumer(client, config)
    result: list[RunStats] = []

    def handler(msg: StreamMessage) -> None:
        seen[msg.id] += 1

    thread = threading.Thread(
        target=lambda: result.append(
            consumer.run(handler, handle_signals=False, stop_event=stop_event)
        )
    )
    thread.start()
    try:
        wait_for(lambda: drained(client.redis, config.stream), timeout, "the group drained")
    finally:
        stop_event.set()
        thread.join(timeout=10)
    assert result, "the consumer did not stop"
    return result[0]


def test_entries_deleted_or_trimmed_while_pending(
    streams_client: RedisStreamsClient,
    redis_client: redis.Redis,
    stream_name: str,
    fault_report: FaultReport,
) -> None:
    r = redis_client
    ids = add(streams_client, stream_name, 20)
    streams_client.ensure_group(stream_name, GROUP)
    fast: dict[str, Any] = {
        "stream": stream_name,
        "group": GROUP,
        "claim_min_idle": timedelta(seconds=0.5),
        "backoff": {"initial": timedelta(seconds=0.1), "first_immediate": False},
        "block_duration": timedelta(seconds=0.1),
    }
    # A consumer takes 10 entries and dies holding them.
    dead = Consumer(streams_client, ConsumerConfig(consumer="dead", batch_size=10, **fast))
    held = [m.id for m in dead.read_messages(block=0.1)]
    assert held == ids[:10]
    # Another fails 2 entries (their retries wait in the pending list) and acks 3.
    live = Consumer(streams_client, ConsumerConfig(consumer="live", batch_size=5, **fast))
    batch = live.read_messages(block=0.1)
    seen: Counter[str] = Counter()
    for msg in batch[:2]:
        live.nack_message(msg.id, RuntimeError("flaky"))
    for msg in batch[2:]:
        seen[msg.id] += 1
        live.ack_message(msg.id)
    waiting = [m.id for m in batch[:2]]

    # Delete 3 held and 1 waiting entry; trim away the 2 oldest held ones.
    deleted = [held[3], held[5], held[7], waiting[0]]
    r.xdel(stream_name, *deleted)
    r.xtrim(stream_name, minid=held[2], approximate=False)
    gone = [*deleted, held[0], held[1]]
    assert r.xpending(stream_name, GROUP)["pending"] == 12  # the PEL still lists them all

    stats = run_until_drained(streams_client, ConsumerConfig(consumer="rescuer", **fast), seen)
    assert stats.lost == len(gone)  # counted, not a crash
    survivors = [i for i in ids if i not in gone]
    result = ledger_check(r, stream_name, GROUP, survivors, seen)
    assert result.duplicated == 0
    fault_report(
        scenario="7 entries deleted while pending",
        fault="XDEL and XTRIM MINID of 6 pending entries (a dead consumer's and a waiting retry)",
        result=result,
        client=r,
        note=f"the {len(gone)} deleted entries counted lost by the consumer, not in Events",
    )


def test_group_or_stream_deleted_under_a_running_worker(
    redis_url: str,
    streams_client: RedisStreamsClient,
    redis_client: redis.Redis,
    stream_name: str,
    tmp_path: Path,
    fault_report: FaultReport,
) -> None:
    r = redis_client
    out = tmp_path / "handled"
    args = ["--out", str(out), "--sleep", "0", "--block-duration", "0.1"]
    worker = spawn(redis_url, stream_name, "w", "slow", *args)
    produced: list[str] = []
    for how in ("start", "XGROUP DESTROY", "DEL"):
        if how == "XGROUP DESTROY":
            r.xgroup_destroy(stream_name, GROUP)
        elif how == "DEL":
            r.delete(stream_name)
        batch = add(streams_client, stream_name, 20)
        produced += batch
        wait_for(
            lambda b=batch: set(b) <= set(handled(out)), what=f"events after {how}", alive=[worker]
        )
    wait_for(lambda: drained(r, stream_name), what="all settled", alive=[worker])
    _, err = stop(worker)

    assert err.count("is gone; creating it again") == 2  # one warning per deletion
    result = ledger_check(r, stream_name, GROUP, produced, handled(out))
    # The group is created again at "0": after XGROUP DESTROY the 20 events still in the
    # stream are delivered again (at least once); after DEL the stream is empty.
    assert result.duplicated == 20
    fault_report(
        scenario="8 group or stream deleted",
        fault="XGROUP DESTROY, then DEL of the stream, under a running worker process",
        result=result,
        client=r,
        note="the group is created again at 0: the 20 entries left after DESTROY run twice",
    )


def test_consumer_churn_keeps_the_consumer_list_bounded(
    streams_client: RedisStreamsClient,
    redis_client: redis.Redis,
    stream_name: str,
    fault_report: FaultReport,
) -> None:
    r = redis_client
    fast: dict[str, Any] = {
        "stream": stream_name,
        "group": GROUP,
        "batch_size": 5,
        "claim_min_idle": timedelta(seconds=0.2),
        "backoff": {"initial": timedelta(seconds=0.05)},
        "block_duration": timedelta(seconds=0.05),
        "delete_idle_consumers": timedelta(seconds=0.1),
    }
    streams_client.ensure_group(stream_name, GROUP)
    produced: list[str] = []
    seen: Counter[str] = Counter()
    sizes: list[int] = []
    for i in range(100):
        produced += add(streams_client, stream_name, 5)
        consumer = Consumer(streams_client, ConsumerConfig(consumer=f"c{i}", **fast))
        if i % 4 == 0:
            consumer.read_messages(block=0.05)  # dies holding its batch
        else:
            consumer.run(
                lambda m: seen.update([m.id]), burst=True, handle_signals=False
            )  # a short-lived worker: drains and exits
        sizes.append(len(r.xinfo_consumers(stream_name, GROUP)))
        time.sleep(0.02)  # pacing: restarts 20+ ms apart, not a wait for a state
    stats = run_until_drained(streams_client, ConsumerConfig(consumer="last", **fast), seen)

    # Bounded: only consumers seen in the last 0.1 s or still holding entries remain.
    assert max(sizes) < 25, sizes
    assert sizes[-1] < 15, sizes
    assert stats.lost == 0
    result = ledger_check(r, stream_name, GROUP, produced, seen)
    fault_report(
        scenario="18 consumer churn",
        fault="100 consumer restarts under new names, 1 in 4 dying with its batch",
        result=result,
        client=r,
        note=f"consumer list at most {max(sizes)} (delete_idle_consumers=0.1 s)",
    )


def test_a_restarted_worker_takes_back_its_own_pending_entries_first(
    redis_url: str,
    streams_client: RedisStreamsClient,
    redis_client: redis.Redis,
    stream_name: str,
    tmp_path: Path,
    fault_report: FaultReport,
) -> None:
    r = redis_client
    ids = add(streams_client, stream_name, 10)
    streams_client.ensure_group(stream_name, GROUP)
    # Two workers each take a batch of 5 and are SIGKILLed holding it. claim_min_idle is
    # 60 s: nobody may take another's entries within this test.
    hold = ["--batch-size", "5", "--claim-min-idle", "60"]
    for name in ("w", "other"):
        ready = tmp_path / f"{name}.ready"
        proc = spawn(redis_url, stream_name, name, "block", "--ready", str(ready), *hold)
        wait_for(ready.exists, what=f"{name} to hold its batch", alive=[proc])
        kill(proc)
    rows = r.xpending_range(stream_name, GROUP, "-", "+", 20)
    owners = {row["message_id"].decode(): row["consumer"].decode() for row in rows}
    mine = [i for i in ids if owners[i] == "w"]
    assert len(mine) == 5
    more = add(streams_client, stream_name, 5)

    # "w" again: its own 5 entries first, on their 2nd delivery, then the new ones.
    out = tmp_path / "w.out"
    args = ["--out", str(out), "--sleep", "0", "--burst", *hold]
    proc = spawn(redis_url, stream_name, "w", "slow", *args)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.read_text().split() == mine + more
    rows = r.xpending_range(stream_name, GROUP, "-", "+", 20)
    assert {row["consumer"] for row in rows} == {b"other"}  # not taken: not idle 60 s yet

    # "other" again takes back its own too: nothing is left pending.
    other_out = tmp_path / "other.out"
    args = ["--out", str(other_out), "--sleep", "0", "--burst", *hold]
    proc = spawn(redis_url, stream_name, "other", "slow", *args)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    result = ledger_check(r, stream_name, GROUP, ids + more, handled(out, other_out))
    fault_report(
        scenario="19 restart under the same name",
        fault="2 workers SIGKILLed holding batches, restarted under their names "
        "(claim_min_idle 60 s)",
        result=result,
        client=r,
        note="each took back its own pending entries first, at once",
    )
