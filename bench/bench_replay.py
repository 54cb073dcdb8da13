"""DLQ replay against a hand-written, non-atomic loop, measured in one run on one private server.

    .venv/bin/python bench/bench_replay.py [N]      (N defaults to 100,000)

Two DLQs of N identical entries (sample webhook events plus a failure record) are replayed:
- baseline: XRANGE pages of 1000, then a pipelined XADD (original fields, retry_count 0) +
  XDEL per entry, 500 entries per pipeline; not atomic, no checks, no marker;
- streamlab: ``replay_dlq(client, stream)`` (select by XRANGE pages, then one atomic Lua
  script per entry, pipelined by 500: exists / marker checks, XADD, XDEL, ledger).
Prints events/s and the ratio streamlab / baseline (higher is better; the goal is >= 0.55).
Each side runs twice, alternating, on fresh DLQs; the best of each is kept.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from streamlab import EmbeddedServer, RedisStreamsClient
from streamlab.events import encode_event
from streamlab.records import DLQ_FIELDS, Failure
from streamlab.replay import replay_dlq
from streamlab.samples import sample_events

BATCH = 500
_DLQ = frozenset(name.encode() for name in DLQ_FIELDS)


def fill(r: Any, dlq: str, source: str, entries: list[dict[str, Any]]) -> None:
    pipe = r.pipeline(transaction=False)
    for i, fields in enumerate(entries, 1):
        pipe.xadd(dlq, fields)
        if i % 1000 == 0:
            pipe.execute()
    pipe.execute()


def dlq_entries(n: int, source: str) -> list[dict[str, Any]]:
    entries = []
    for i, event in enumerate(sample_events(n, seed=1)):
        fields: dict[str, Any] = dict(encode_event(event))
        failure = Failure(
            error=f"TimeoutError: upstream timed out after 30s (request {i})",
            error_type="TimeoutError",
            traceback='Traceback (most recent call last):\n  File "handler.py", line 42\n',
            attempts=4,
            source_stream=source,
            source_id=f"{1_700_000_000_000 + i}-0",
            group="billing",
            consumer="worker-1",
        )
        fields.update(failure.to_fields())
        entries.append(fields)
    return entries


def hand_written(r: Any, dlq: str, target: str) -> int:
    done = 0
    start = "-"
    pipe = r.pipeline(transaction=False)
    while True:
        page = r.xrange(dlq, start, "+", count=1000)
        for entry_id, raw in page:
            fields = {k: v for k, v in raw.items() if k not in _DLQ}
            fields[b"retry_count"] = b"0"
            pipe.xadd(target, fields)
            pipe.xdel(dlq, entry_id)
            done += 1
            if done % BATCH == 0:
                pipe.execute()
        if len(page) < 1000:
            break
        start = "(" + page[-1][0].decode()
    pipe.execute()
    return done


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with EmbeddedServer() as server:
        client = RedisStreamsClient(server.client())
        r = client.redis
        best_base = best_replay = float("inf")
        for round_ in range(2):
            base_src, replay_src = f"{{base-{round_}}}", f"{{replay-{round_}}}"
            fill(r, client.dlq_stream(base_src), base_src, dlq_entries(n, base_src))
            fill(r, client.dlq_stream(replay_src), replay_src, dlq_entries(n, replay_src))

            started = time.perf_counter()
            assert hand_written(r, client.dlq_stream(base_src), base_src) == n
            best_base = min(best_base, time.perf_counter() - started)

            started = time.perf_counter()
            report = replay_dlq(client, replay_src, batch_size=BATCH, progress=False)
            best_replay = min(best_replay, time.perf_counter() - started)
            assert len(report.replayed) == n, report
            assert r.xlen(replay_src) == n
            assert r.xlen(client.dlq_stream(replay_src)) == 0
            r.delete(base_src, replay_src)
        print(f"server: {server.binary}, N = {n:,}")
        print(f"baseline  XRANGE + pipelined XADD/XDEL : {n / best_base:>10,.0f} events/s")
        print(f"streamlab replay_dlq (atomic, Lua)     : {n / best_replay:>10,.0f} events/s")
        print(
            f"ratio streamlab / baseline             : {best_base / best_replay:.2f}"
            "  (goal >= 0.55)"
        )


if __name__ == "__main__":
    main()
