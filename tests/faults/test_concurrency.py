"""Scenarios 9 and 20: everything at once on one stream.

9. a producer, two worker processes and two replay loops on one stream at the same time:
   each failed event is dead-lettered once, replayed once and then handled;
20. `stream_to_dataframe` exports while a producer writes: every export is a gapless,
    duplicate-free prefix of the stream.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest
import redis

from faults.common import GROUP, FaultReport, Producer, drained, handled, spawn, stop, wait_for
from faults.ledger import ledger_check
from streamlab.client import RedisStreamsClient, connect
from streamlab.frames import stream_to_dataframe
from streamlab.replay import replay_dlq, select_dlq

pytestmark = pytest.mark.fault


class ReplayLoop:
    """A thread replaying the whole DLQ again and again, remembering each DLQ entry's source."""

    def __init__(self, url: str, stream: str) -> None:
        self.client = RedisStreamsClient(connect(url))
        self.stream = stream
        self.source_of: dict[str, str] = {}
        self.replayed = 0
        self.runs = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.is_set():
            selection = select_dlq(self.client, self.stream)
            for msg in selection:
                assert msg.failure is not None
                self.source_of[msg.id] = msg.failure.source_id
            report = replay_dlq(self.client, self.stream, selection, batch_size=20)
            assert not report.failed, report.failed
            self.replayed += len(report.replayed)
            self.runs += 1
            self.stopped.wait(0.05)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=20)
        assert not self.thread.is_alive()
        self.client.redis.close()


def test_replays_consumers_and_producers_at_once(
    redis_url: str,
    redis_client: redis.Redis,
    stream_name: str,
    tmp_path: Path,
    fault_report: FaultReport,
) -> None:
    r = redis_client
    r.xgroup_create(stream_name, GROUP, id="0", mkstream=True)
    outs = [tmp_path / f"w{i}" for i in range(2)]
    args = ["--sleep", "0.001", "--batch-size", "10", "--block-duration", "0.1"]
    workers = [
        spawn(redis_url, stream_name, f"w{i}", "reject", "--out", str(out), *args)
        for i, out in enumerate(outs)
    ]
    replayers = [ReplayLoop(redis_url, stream_name) for _ in range(2)]
    with Producer(redis_url, stream_name, fail_every=10, pause=0.002) as producer:
        producer.wait_until(800)
    dlq = f"{stream_name}_dlq"
    # Every failed event is dead-lettered, replayed and handled: nothing pending, DLQ empty.
    wait_for(
        lambda: drained(r, stream_name) and r.xlen(dlq) == 0,
        timeout=30,
        what="everything handled",
        alive=workers,
    )
    for loop in replayers:
        loop.stop()
    for proc in workers:
        stop(proc)

    source_of = replayers[0].source_of | replayers[1].source_of
    replay_of = {
        i.decode(): f[b"streamlab:replay_of"].decode()
        for i, f in r.xrange(stream_name, "-", "+")
        if b"streamlab:replay_of" in f
    }
    # Two replay loops raced over the same DLQ: each event was injected once.
    assert sorted(Counter(replay_of.values()).values()) == [1] * len(producer.failing)
    assert sum(loop.replayed for loop in replayers) == len(producer.failing)
    by_source: Counter[str] = Counter()
    for entry_id, n in handled(*outs).items():
        by_source[source_of[replay_of[entry_id]] if entry_id in replay_of else entry_id] += n
    assert {source_of[d] for d in replay_of.values()} == set(producer.failing)
    result = ledger_check(r, stream_name, GROUP, producer.ids, by_source)
    assert result.dlq == 0
    fault_report(
        scenario="9 replays, consumers, producers at once",
        fault="1 producer (1 in 10 failing), 2 worker processes, 2 replay loops on one stream",
        result=result,
        client=r,
        note=f"{len(producer.failing)} dead-lettered, each replayed once, then handled",
    )


def test_export_under_live_writes_has_no_gaps_and_no_duplicates(
    redis_url: str, redis_client: redis.Redis, stream_name: str, fault_report: FaultReport
) -> None:
    r = redis_client
    exports: list[list[str]] = []
    with Producer(redis_url, stream_name, pause=0) as producer:
        producer.wait_until(500)
        while len(exports) < 10:
            frame = stream_to_dataframe(r, stream_name, page_size=100)
            exports.append(frame["id"].tolist())
    final = [i.decode() for i, _ in r.xrange(stream_name, "-", "+")]
    assert final == producer.ids  # the producer's ids, in order
    assert len(exports[-1]) > len(exports[0])  # the writes ran during the exports
    for ids in exports:
        assert ids == final[: len(ids)]  # a prefix: no gap, no duplicate, in order
    last = stream_to_dataframe(r, stream_name, page_size=100)["id"].tolist()
    result = ledger_check(r, stream_name, "export", producer.ids, Counter(last))
    fault_report(
        scenario="20 export under live writes",
        fault=f"10 stream_to_dataframe exports (pages of 100) while a producer wrote "
        f"{len(final):,} events",
        result=result,
        client=r,
        note="each export a gapless, duplicate-free prefix",
    )
