"""Scenario 21: the server out of memory (``maxmemory`` + ``noeviction``, set with CONFIG SET
on a server of the test's own) while a worker consumes and dead-letters and while a replay
runs. Nothing is lost: once memory is freed, every event is handled or dead-lettered, and the
replay run again replays what the first one could not.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import redis

from faults.common import GROUP, FaultReport, add, drained, handled, spawn, stop, wait_for
from faults.ledger import ledger_check
from streamlab.client import RedisStreamsClient
from streamlab.embedded import EmbeddedServer
from streamlab.replay import replay_dlq

pytestmark = pytest.mark.fault

ARGS = ["--sleep", "0", "--batch-size", "10", "--claim-min-idle", "2", "--backoff-initial", "0.1"]


def source_ids(r: redis.Redis, dlq: str) -> dict[str, str]:
    return {i.decode(): f[b"dlq_source_id"].decode() for i, f in r.xrange(dlq, "-", "+")}


def test_out_of_memory_during_consume_dead_letter_and_replay(
    private_server: EmbeddedServer, tmp_path: Path, fault_report: FaultReport
) -> None:
    url, r = private_server.url, private_server.client()
    client = RedisStreamsClient(r)
    client.ensure_group("s", GROUP)
    dlq = client.dlq_stream("s")
    out = tmp_path / "handled"

    # Phase 1, memory to spare: 100 events, 10 of them failing, end as 90 handled + 10 dead.
    produced = add(client, "s", 90) + add(client, "s", 10, event_type="fail")
    worker = spawn(url, "s", "w1", "reject", "--out", str(out), *ARGS)
    wait_for(lambda: drained(r, "s"), what="phase 1", alive=[worker])
    stop(worker)
    assert r.xlen(dlq) == 10

    # Phase 2, out of memory: 100 more events are read and handled, the 10 failing ones
    # cannot be dead-lettered (the script is refused) and stay pending; the replay fails.
    produced += add(client, "s", 90) + add(client, "s", 10, event_type="fail")
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", 1)
    with pytest.raises(redis.OutOfMemoryError):
        r.xadd("s", {"event_type": "push"})
    worker = spawn(url, "s", "w2", "reject", "--out", str(out), *ARGS)
    wait_for(lambda: len(handled(out)) == 180, what="phase 2 handled", alive=[worker])
    report = replay_dlq(client, "s")
    assert len(report.failed) == 10, report
    assert all("OutOfMemoryError" in reason for reason in report.failed.values())
    assert r.xlen(dlq) == 10  # the replay left every entry in the DLQ
    assert r.xpending("s", GROUP)["pending"] == 10  # the failing ones wait, pending
    # The worker keeps trying: past claim_min_idle (2 s) it takes the 10 back, and fails to
    # dead-letter them again; it does not die.
    wait_for(
        lambda: all(
            row["times_delivered"] >= 2 for row in r.xpending_range("s", GROUP, "-", "+", 20)
        ),
        what="the worker to try again",
        alive=[worker],
    )
    assert r.xlen(dlq) == 10

    # Phase 3, memory freed: the worker dead-letters the 10; the replay replays all 20.
    r.config_set("maxmemory", 0)
    wait_for(lambda: drained(r, "s") and r.xlen(dlq) == 20, what="phase 3", alive=[worker])
    source_of = source_ids(r, dlq)
    report = replay_dlq(client, "s")
    assert len(report.replayed) == 20
    assert report.ok
    wait_for(lambda: drained(r, "s"), what="the replayed events", alive=[worker])
    _, err = stop(worker)
    assert "OutOfMemoryError" in err  # it saw the OOM and waited it out

    replay_of = {
        i.decode(): f[b"streamlab:replay_of"].decode()
        for i, f in r.xrange("s", "-", "+")
        if b"streamlab:replay_of" in f
    }
    assert len(replay_of) == 20
    by_source: Counter[str] = Counter()
    for entry_id, n in handled(out).items():
        by_source[source_of[replay_of[entry_id]] if entry_id in replay_of else entry_id] += n
    result = ledger_check(r, "s", GROUP, produced, by_source)
    assert result.dlq == 0
    fault_report(
        scenario="21 out of memory",
        fault="maxmemory 1 + noeviction while a worker consumes and dead-letters and a replay "
        "runs; then memory freed",
        result=result,
        client=r,
        note="the OOM replay failed with all 10 entries kept in the DLQ; the rerun replayed 20",
    )
    r.close()
