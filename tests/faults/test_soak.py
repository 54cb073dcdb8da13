"""Scenario 15, soak (``-m slow``): 5 worker processes, 200,000 events produced over about
100 s, 2% failing for good and 10% failing once, and for two minutes a random worker
SIGKILLed every 1-4 s and replaced (half the time under its own name, which takes its pending
entries back at once).

Every event must end handled or dead-lettered exactly once, nothing pending. A delivery whose
holder is killed counts as an attempt (the delivery counter is the attempt count), so an event
in hand at several kills may spend its ``max_retries`` and be dead-lettered as
``ConsumerDied``: counted in the DLQ, never lost.
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis
from workers import flaky_kind

from faults.common import GROUP, FaultReport, drained, handled, spawn, wait_for
from faults.ledger import ledger_check
from streamlab.client import RedisStreamsClient, connect
from streamlab.events import StreamEvent
from streamlab.samples import sample_events

pytestmark = [pytest.mark.fault, pytest.mark.slow]

EVENTS = 200_000
WORKERS = 5
BATCH = 20
PERMANENT_EVERY = 50  # 2%
KILLING = 120.0  # seconds
PRODUCING = 100.0  # seconds


def produce(url: str, stream: str, events: list[StreamEvent], ids: dict[str, StreamEvent]) -> None:
    """Add ``events`` in chunks of 1,000, paced to spread them over ``PRODUCING`` seconds."""
    client = RedisStreamsClient(connect(url))
    started = time.monotonic()
    for n in range(0, len(events), 1000):
        chunk = events[n : n + 1000]
        ids.update(zip(client.add_many(stream, chunk), chunk, strict=True))
        ahead = started + PRODUCING * (n + 1000) / len(events) - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)  # pacing the producer, not a wait for a state
    client.redis.close()


@pytest.mark.timeout(900)
def test_soak_five_workers_random_kills(
    redis_url: str,
    streams_client: RedisStreamsClient,
    redis_client: redis.Redis,
    stream_name: str,
    tmp_path: Path,
    fault_report: FaultReport,
) -> None:
    r = redis_client
    streams_client.ensure_group(stream_name, GROUP)
    events = list(sample_events(EVENTS, seed=15))
    by_entry: dict[str, StreamEvent] = {}
    producing = threading.Thread(target=produce, args=(redis_url, stream_name, events, by_entry))
    producing.start()

    rng = random.Random(15)
    workers: dict[str, subprocess.Popen[str]] = {}
    outs: list[Path] = []
    args = [
        "--batch-size", str(BATCH), "--claim-min-idle", "1", "--backoff-initial", "0.05",
        "--max-retries", "2", "--permanent-every", str(PERMANENT_EVERY),
    ]  # fmt: skip

    def start(name: str) -> None:
        outs.append(tmp_path / f"{name}-{len(outs)}.out")
        workers[name] = spawn(redis_url, stream_name, name, "flaky", "--out", str(outs[-1]), *args)

    for i in range(WORKERS):
        start(f"w{i}")
    kills = same_name = 0
    deadline = time.monotonic() + KILLING
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(1.0, 4.0))  # the kill schedule itself, not a wait for a state
        name = rng.choice(sorted(workers))
        victim = workers.pop(name)
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=10)
        kills += 1
        if rng.random() < 0.5:
            same_name += 1
            start(name)
        else:
            start(f"w{WORKERS + kills}")
    producing.join(timeout=60)
    assert len(by_entry) == EVENTS
    wait_for(
        lambda: drained(r, stream_name),
        timeout=600,
        what="the soak to drain",
        alive=list(workers.values()),
    )
    for proc in workers.values():
        proc.send_signal(signal.SIGTERM)
    for proc in workers.values():
        _, err = proc.communicate(timeout=30)
        # -SIGTERM: a worker started just before the end, still importing, so it had not
        # installed its handler, nor read anything (the ledger checks that nothing is held).
        assert proc.returncode in (0, -signal.SIGTERM), err[-2000:]

    permanent = {
        eid for eid, e in by_entry.items() if flaky_kind(e.id, PERMANENT_EVERY) == "permanent"
    }
    assert 0.015 * EVENTS < len(permanent) < 0.025 * EVENTS
    counts = handled(*outs)
    result = ledger_check(r, stream_name, GROUP, list(by_entry), counts)
    failures = {m.failure.source_id: m.failure for m in streams_client.read_dlq(stream_name)}  # type: ignore[union-attr]
    assert permanent <= set(failures)
    assert not permanent & set(counts)
    died = {eid: f for eid, f in failures.items() if eid not in permanent}
    assert {f.error_type for f in died.values()} <= {"ConsumerDied"}
    assert len(died) <= kills * BATCH
    # At least once: only entries in hand when a worker was SIGKILLed may run twice.
    assert result.duplicated <= kills * BATCH
    fault_report(
        scenario="15 soak",
        fault=f"{WORKERS} workers, 2% failing for good, 10% once; {kills} random SIGKILLs in "
        f"{KILLING:.0f} s ({same_name} restarted under the same name)",
        result=result,
        client=r,
        note=f"{len(died)} dead-lettered as ConsumerDied after repeated kills",
    )
