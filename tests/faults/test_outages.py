"""Scenarios 2, 3 and 11: the server goes away under producers and worker processes.

2. Redis SIGKILLed and restarted from its AOF (``appendonly yes``, ``appendfsync always``);
3. every client connection killed (``CLIENT KILL TYPE normal``), again and again;
11. Redis unreachable when the worker starts, and again mid-run: the worker waits with
    bounded backoff, without spinning (its CPU time is measured while it waits).

Each runs on a server of its own (``private_server``), since it kills connections or the
server itself.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from faults.common import (
    GROUP,
    WORKER,
    FaultReport,
    Producer,
    cpu_seconds,
    drained,
    handled,
    spawn,
    stop,
    wait_for,
)
from faults.ledger import ledger_check
from streamlab.client import RedisStreamsClient, connect
from streamlab.embedded import EmbeddedServer

pytestmark = pytest.mark.fault

ARGS = ["--batch-size", "10", "--claim-min-idle", "1", "--backoff-initial", "0.1"]


def test_redis_restarted_from_its_aof_under_producers_and_consumers(
    private_server: EmbeddedServer, tmp_path: Path, fault_report: FaultReport
) -> None:
    url, r = private_server.url, private_server.client()
    RedisStreamsClient(r).ensure_group("s", GROUP)
    outs = [tmp_path / f"w{i}" for i in range(2)]
    workers = [
        spawn(url, "s", f"w{i}", "slow", "--out", str(out), "--sleep", "0.002", *ARGS)
        for i, out in enumerate(outs)
    ]
    with Producer(url, "s") as producer:
        for n in range(2):
            producer.wait_until(150 * (n + 1))
            wait_for(lambda: sum(handled(*outs).values()) > 0, what="handling", alive=workers)
            private_server.restart(kill=True)
        producer.wait_until(len(producer.ids) + 100)
    wait_for(lambda: drained(r, "s"), timeout=30, what="all settled", alive=workers)
    for proc in workers:
        stop(proc)

    assert producer.errors  # the producer saw both outages
    result = ledger_check(r, "s", GROUP, producer.ids, handled(*outs))
    # At least once: what was in hand when the server died may run twice.
    assert result.duplicated <= 2 * 2 * 10
    fault_report(
        scenario="2 Redis restarted (AOF)",
        fault="server SIGKILLed and restarted from its AOF twice, under a producer and 2 workers",
        result=result,
        client=r,
    )
    r.close()


def test_client_connections_killed_repeatedly(
    private_server: EmbeddedServer, tmp_path: Path, fault_report: FaultReport
) -> None:
    url, r = private_server.url, private_server.client()
    RedisStreamsClient(r).ensure_group("s", GROUP)
    outs = [tmp_path / f"w{i}" for i in range(2)]
    workers = [
        spawn(url, "s", f"w{i}", "slow", "--out", str(out), "--sleep", "0.002", *ARGS)
        for i, out in enumerate(outs)
    ]
    killed = 0
    with Producer(url, "s") as producer:
        producer.wait_until(50)
        for _ in range(10):
            seen = sum(handled(*outs).values())
            wait_for(
                lambda s=seen: sum(handled(*outs).values()) > s, what="progress", alive=workers
            )
            killed += int(r.client_kill_filter(_type="normal", skipme=True))
    wait_for(lambda: drained(r, "s"), timeout=30, what="all settled", alive=workers)
    for proc in workers:
        stop(proc)

    assert killed >= 10  # a round may find a client reconnecting, not every round does
    result = ledger_check(r, "s", GROUP, producer.ids, handled(*outs))
    fault_report(
        scenario="3 CLIENT KILL",
        fault=f"CLIENT KILL TYPE normal 10 times ({killed} connections) under a producer "
        "and 2 workers",
        result=result,
        client=r,
    )
    r.close()


def _cpu_share(pid: int, seconds: float) -> float:
    """The share of one core a process used over the next ``seconds`` of wall time."""
    cpu, wall = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)  # the measurement window itself, not a wait for a state
    return (cpu_seconds(pid) - cpu) / (time.monotonic() - wall)


def test_redis_unreachable_at_start_and_mid_run(
    private_server: EmbeddedServer, tmp_path: Path, fault_report: FaultReport
) -> None:
    url = private_server.url
    private_server.stop(kill=True)
    out, err = tmp_path / "handled", tmp_path / "stderr"
    with err.open("w") as sink:
        worker = subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                url,
                "s",
                GROUP,
                "w",
                "slow",
                "--out",
                str(out),
                "--sleep",
                "0.002",
                *ARGS,
            ],
            stdout=subprocess.PIPE,
            stderr=sink,
            text=True,
        )
    alive = [worker]
    try:
        # Down at start: the worker logs the outage and waits, without spinning.
        wait_for(lambda: "redis unavailable" in err.read_text(), what="the outage", alive=alive)
        waiting_at_start = _cpu_share(worker.pid, 2.0)
        private_server.start()
        r = private_server.client()
        client = RedisStreamsClient(r)
        started = time.monotonic()
        first = [client.add_to_stream("s", {"event_type": "push"}) for _ in range(100)]
        wait_for(lambda: drained(r, "s"), timeout=25, what="first batch", alive=alive)
        recovered_in = time.monotonic() - started

        # Down mid-run.
        private_server.stop(kill=True)
        waiting_mid_run = _cpu_share(worker.pid, 2.0)
        private_server.start()
        second = [client.add_to_stream("s", {"event_type": "push"}) for _ in range(100)]
        wait_for(lambda: drained(r, "s"), timeout=25, what="second batch", alive=alive)
        stop(worker)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate(timeout=10)

    # Waits are bounded and the worker sleeps through them: back within the consumer's
    # backoff cap (5 s), plus a wide margin for a loaded machine.
    assert recovered_in < 5 + 5
    assert waiting_at_start < 0.2, f"{waiting_at_start:.0%} of a core while waiting at start"
    assert waiting_mid_run < 0.2, f"{waiting_mid_run:.0%} of a core while waiting mid-run"
    result = ledger_check(r, "s", GROUP, first + second, handled(out))
    fault_report(
        scenario="11 Redis unreachable",
        fault="no server at worker start, then server SIGKILLed mid-run",
        note=f"back {recovered_in:.1f} s after the server; CPU while waiting "
        f"{waiting_at_start:.1%} / {waiting_mid_run:.1%} of a core",
        result=result,
        client=r,
    )
    r.close()


def test_every_id_a_producer_got_survives_a_kill(private_server: EmbeddedServer) -> None:
    # The harness behind scenario 2: the producer rides out the restart on its own, and
    # with appendfsync always every id an add returned is in the stream afterwards.
    with Producer(private_server.url, "s") as producer:
        producer.wait_until(10)
        private_server.restart(kill=True)
        producer.wait_until(len(producer.ids) + 10)
    r = connect(private_server.url)
    stored = {i.decode() for i, _ in r.xrange("s")}
    assert set(producer.ids) <= stored  # appendfsync always: every returned id survived
    r.close()
