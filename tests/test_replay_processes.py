"""Replay across processes: concurrent replays and a replay SIGKILLed half-way."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from test_replay_helpers import dlq_fields, fill_dlq

from streamlab.client import RedisStreamsClient
from streamlab.replay import replay_dlq

# Selects the whole DLQ, waits for the go file, replays, prints the report as JSON.
REPLAYER = """
import json, sys, time
from pathlib import Path
from streamlab.client import RedisStreamsClient
from streamlab.replay import replay_dlq, select_dlq

url, stream, go, rate, batch = sys.argv[1:6]
client = RedisStreamsClient.from_url(url)
selection = select_dlq(client, stream)
print("ready", flush=True)
while not Path(go).exists():
    time.sleep(0.001)
report = replay_dlq(
    client, stream, selection, rate=float(rate) if rate != "-" else None, batch_size=int(batch)
)
print(json.dumps({"replayed": report.replayed, "skipped": list(report.skipped)}), flush=True)
"""


def start(
    url: str, stream: str, go: Path, *, rate: str = "-", batch: int = 20
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", REPLAYER, url, stream, str(go), rate, str(batch)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def replay_counts(client: RedisStreamsClient, stream: str) -> Counter[str]:
    return Counter(f[b"streamlab:replay_of"].decode() for _, f in client.redis.xrange(stream))


def test_two_processes_replay_each_event_once(
    streams_client: RedisStreamsClient, stream_name: str, redis_url: str, tmp_path: Path
) -> None:
    dlq = streams_client.dlq_stream(stream_name)
    ids = fill_dlq(streams_client.redis, dlq, [dlq_fields(i, stream_name) for i in range(2000)])
    go = tmp_path / "go"
    # Paced to ~0.5 s each, so that the two runs surely overlap.
    procs = [start(redis_url, stream_name, go, rate="4000") for _ in range(2)]
    go.touch()
    reports = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        reports.append(json.loads(out))
    counts = replay_counts(streams_client, stream_name)
    assert set(counts) == set(ids)
    assert set(counts.values()) == {1}
    assert streams_client.redis.xlen(dlq) == 0
    first, second = (set(r["replayed"]) for r in reports)
    # Which process wins which batch is up to the scheduler (on a loaded 2-core machine one
    # may even win them all); what must hold is that each event went in exactly once.
    assert not first & second
    assert first | second == set(ids)
    assert set(reports[0]["skipped"]) == second
    assert set(reports[1]["skipped"]) == first


def test_replay_killed_half_way_then_rerun(
    streams_client: RedisStreamsClient, stream_name: str, redis_url: str, tmp_path: Path
) -> None:
    r = streams_client.redis
    dlq = streams_client.dlq_stream(stream_name)
    ids = fill_dlq(r, dlq, [dlq_fields(i, stream_name) for i in range(600)])
    go = tmp_path / "go"
    proc = start(redis_url, stream_name, go, rate="300", batch=500)
    go.touch()
    deadline = time.monotonic() + 30
    while r.xlen(stream_name) < 100 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.stdout is not None
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    counts = replay_counts(streams_client, stream_name)
    left = {i.decode() for i, _ in r.xrange(dlq)}
    assert 100 <= len(counts) < 600  # really killed half-way
    assert set(counts.values()) == {1}
    assert set(counts) | left == set(ids)  # nothing lost ...
    assert not set(counts) & left  # ... and nothing both replayed and still in the DLQ
    report = replay_dlq(streams_client, stream_name)
    assert sorted(report.replayed) == sorted(left)
    counts = replay_counts(streams_client, stream_name)
    assert set(counts) == set(ids)
    assert set(counts.values()) == {1}
    assert r.xlen(dlq) == 0
