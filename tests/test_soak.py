"""Soak: worker processes under churn (SIGKILLed and replaced) over a stream with transient
and permanent failures. Every event must end acked or dead-lettered, nothing pending, each
permanent failure in the DLQ exactly once.

A delivery whose holder is killed counts as an attempt (DESIGN.md: the delivery counter is the
attempt count), so an event that failed once and was then in hand at two kills spends its
``max_retries=2`` and is dead-lettered as ``ConsumerDied``. That is rare but not a bug: the
kill period matches ``claim_min_idle``, so the next victim is often the worker that has just
reclaimed the previous victim's batch."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from workers import flaky_kind

from streamlab.client import RedisStreamsClient
from streamlab.samples import sample_events

WORKER = Path(__file__).with_name("workers.py")
EVENTS = 100_000
BATCH = 20


def spawn(url: str, stream: str, name: str, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable, str(WORKER), url, stream, "g", name, "flaky",
            "--out", str(out), "--batch-size", str(BATCH), "--claim-min-idle", "1",
            "--backoff-initial", "0.05", "--max-retries", "2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_soak_with_worker_churn(
    streams_client: RedisStreamsClient, stream_name: str, redis_url: str, tmp_path: Path
) -> None:
    r = streams_client.redis
    streams_client.ensure_group(stream_name, "g")
    events = list(sample_events(EVENTS, seed=7))
    by_entry = dict(zip(streams_client.add_many(stream_name, events), events, strict=True))
    permanent = {eid for eid, e in by_entry.items() if flaky_kind(e.id) == "permanent"}
    assert 0.04 * EVENTS < len(permanent) < 0.06 * EVENTS

    workers: dict[str, subprocess.Popen[bytes]] = {}
    outs: list[Path] = []

    def start(name: str) -> None:
        outs.append(tmp_path / f"{name}.out")
        workers[name] = spawn(redis_url, stream_name, name, outs[-1])

    for i in range(3):
        start(f"w{i}")
    killed = 0
    deadline = time.monotonic() + 240
    dlq = streams_client.dlq_stream(stream_name)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        info = streams_client.get_stream_info(stream_name).groups[0]
        if info.lag == 0 and info.pending == 0:
            break
        if killed < 10:  # churn: kill the oldest live worker, start a fresh one
            victim = workers.pop(next(iter(workers)))
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=10)
            killed += 1
            start(f"w{killed + 2}")
    for proc in workers.values():
        proc.send_signal(signal.SIGTERM)
    for proc in workers.values():
        assert proc.wait(timeout=30) == 0

    info = streams_client.get_stream_info(stream_name).groups[0]
    assert (info.lag, info.pending) == (0, 0)
    handled = Counter(line for out in outs if out.exists() for line in out.read_text().split())
    failures = {m.failure.source_id: m.failure for m in streams_client.read_dlq(stream_name)}  # type: ignore[union-attr]
    assert r.xlen(dlq) == len(failures)  # each dead letter once
    assert permanent <= set(failures)
    assert not permanent & set(handled)
    # Nothing lost: every other event was handled, or its holders kept dying until its
    # attempts were spent; those are few, as only batches in hand at a kill can be.
    died = {eid: f for eid, f in failures.items() if eid not in permanent}
    assert {f.error_type for f in died.values()} <= {"ConsumerDied"}
    assert all(f.attempts > 3 for f in died.values())
    assert len(died) <= killed * BATCH
    assert set(handled) | set(died) == set(by_entry) - permanent
    # At-least-once: only entries in hand when a worker was SIGKILLed may run twice.
    assert sum(n - 1 for n in handled.values()) <= killed * BATCH
