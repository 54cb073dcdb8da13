"""Fault scenarios 5 and 14: a handler slower than ``claim_min_idle``, and SIGTERM while a
handler hangs. Workers are real processes (``tests/workers.py``) on the session's server."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from faults.common import add, spawn, wait_for
from faults.ledger import HandledLog, ledger_check
from streamlab.client import RedisStreamsClient

pytestmark = pytest.mark.fault


def pending(r: redis.Redis, stream: str) -> dict[str, tuple[str, int]]:
    rows: list[dict[str, Any]] = r.xpending_range(stream, "g", "-", "+", 1000)
    return {
        x["message_id"].decode(): (x["consumer"].decode(), int(x["times_delivered"])) for x in rows
    }


def test_scenario_5_a_handler_slower_than_claim_min_idle_is_never_doubled(
    redis_url: str,
    redis_client: redis.Redis,
    stream_name: str,
    tmp_path: Path,
    fault_report: Any,
) -> None:
    # Each message takes 3 x claim_min_idle, so every batch of two outlives claim_min_idle
    # three to six times over. Before renewal, the idle worker reclaimed the busy worker's
    # waiting messages and both handled them.
    streams_client = RedisStreamsClient(redis_client)
    produced = add(streams_client, stream_name, 8)
    streams_client.ensure_group(stream_name, "g")
    log = HandledLog(tmp_path / "handled")
    options = ("--sleep", "1.5", "--claim-min-idle", "0.5", "--backoff-initial", "0.1")
    workers = [
        spawn(redis_url, stream_name, f"w{n}", "slow", "--out", str(log.path), "--batch-size",
              "2", *options)
        for n in (1, 2)
    ]  # fmt: skip
    try:
        wait_for(lambda: set(log.counts()) >= set(produced), 60, "every event to be handled")
        time.sleep(1.0)  # two claim_min_idle more: a wrong reclaim would be handled by now
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        outputs = [worker.communicate(timeout=20) for worker in workers]
    assert [w.returncode for w in workers] == [0, 0], [err for _, err in outputs]
    stats = [json.loads(out) for out, _ in outputs]

    result = ledger_check(redis_client, stream_name, "g", produced, log.counts())
    fault_report(
        scenario="5 handler slower than claim_min_idle",
        fault="2 worker processes, handler sleeps 3 x claim_min_idle (1.5 s vs 0.5 s)",
        result=result,
        client=redis_client,
    )
    assert (result.duplicated, result.double_ids) == (0, [])
    assert [s["reclaimed"] for s in stats] == [0, 0]
    assert sum(s["acked"] for s in stats) == len(produced)


def test_scenario_14_sigterm_during_a_hung_handler_stops_within_the_grace_losing_nothing(
    redis_url: str,
    redis_client: redis.Redis,
    stream_name: str,
    tmp_path: Path,
    fault_report: Any,
) -> None:
    streams_client = RedisStreamsClient(redis_client)
    produced = add(streams_client, stream_name, 10)
    streams_client.ensure_group(stream_name, "g")
    log = HandledLog(tmp_path / "handled")
    ready = tmp_path / "ready"
    grace = 1.0
    hung = spawn(
        redis_url, stream_name, "hung", "block", "--ready", str(ready), "--batch-size", "5",
        "--shutdown-grace", str(grace), "--claim-min-idle", "1", "--backoff-initial", "0.1",
    )  # fmt: skip
    try:
        wait_for(lambda: ready.exists() or hung.poll() is not None, 30, "the worker to hang")
        assert hung.poll() is None, hung.communicate()
        asked = time.monotonic()
        hung.send_signal(signal.SIGTERM)
        out, err = hung.communicate(timeout=grace + 10)
        took = time.monotonic() - asked
    finally:
        if hung.poll() is None:
            hung.kill()
            hung.communicate()
    assert hung.returncode == 0, err
    # The grace, the watchdog's 0.1 s tick, settling and the interpreter's exit.
    assert grace <= took < grace + 2.0, took
    stats = json.loads(out)
    assert (stats["acked"], stats["failed"], stats["retried"], stats["dead_lettered"]) == (
        0,
        0,
        0,
        0,
    )
    # The batch in hand stays pending at its first delivery: not acked, not dead-lettered.
    held = produced[:5]
    assert pending(redis_client, stream_name) == dict.fromkeys(held, ("hung", 1))

    # The next worker takes the batch over after claim_min_idle and drains the stream.
    drain = spawn(
        redis_url, stream_name, "next", "slow", "--out", str(log.path), "--sleep", "0",
        "--claim-min-idle", "1", "--backoff-initial", "0.1",
    )  # fmt: skip
    try:
        wait_for(lambda: set(log.counts()) >= set(produced), 30, "the next worker to drain")
    finally:
        drain.send_signal(signal.SIGTERM)
        out, err = drain.communicate(timeout=20)
    assert drain.returncode == 0, err
    assert json.loads(out)["reclaimed"] == len(held)

    result = ledger_check(redis_client, stream_name, "g", produced, log.counts())
    fault_report(
        scenario="14 SIGTERM during processing",
        fault=f"SIGTERM while the handler hangs; shutdown_grace {grace:g} s",
        result=result,
        client=redis_client,
        note=f"worker exited {took:.1f} s after SIGTERM",
    )
    assert (result.handled, result.duplicated, result.dlq) == (10, 0, 0)
