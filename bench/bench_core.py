"""Core hot paths against hand-written redis-py, measured in one run on one private server.

    .venv/bin/python bench/bench_core.py [N]

Prints events/s and the ratio streamlab / baseline (higher is better; 1.0 = as fast):
- add_many vs a hand-written pipelined XADD loop (json.dumps of the nested values);
- Consumer.run(burst=True) with a no-op handler (decode, validate, batched ack, metrics) vs a
  hand-written XREADGROUP + json.loads + XACK loop, both with batches of 500.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from prometheus_client import CollectorRegistry

from streamlab import (
    Consumer,
    ConsumerConfig,
    EmbeddedServer,
    PrometheusMetrics,
    RedisStreamsClient,
)
from streamlab.events import StreamEvent
from streamlab.records import format_time
from streamlab.samples import sample_events

BATCH = 500


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def hand_written_add(r, stream: str, events: list[StreamEvent]) -> None:
    pipe = r.pipeline(transaction=False)
    for i, e in enumerate(events, 1):
        pipe.xadd(
            stream,
            {
                "id": e.id,
                "event_type": e.event_type,
                "repository": e.repository,
                "tenant_id": e.tenant_id,
                "payload": json.dumps(e.payload),
                "auth_context": json.dumps(e.auth_context.model_dump() if e.auth_context else None),
                "timestamp": format_time(e.timestamp),
                "retry_count": str(e.retry_count),
            },
        )
        if i % 1000 == 0:
            pipe.execute()
    pipe.execute()


def hand_written_consume(r, stream: str) -> int:
    r.xgroup_create(stream, "g", id="0", mkstream=True)
    done = 0
    while True:
        reply = r.xreadgroup("g", "c", {stream: ">"}, count=BATCH)
        if not reply:
            return done
        entries = reply[0][1]
        for _, fields in entries:
            json.loads(fields[b"payload"])
            json.loads(fields[b"auth_context"])
        r.xack(stream, "g", *[eid for eid, _ in entries])
        done += len(entries)


def produce(r: Any, client: RedisStreamsClient, n: int) -> tuple[float, float]:
    """Both producers on the same events; the events are freed on return."""
    events = list(sample_events(n))
    base = timed(lambda: hand_written_add(r, "base", events))
    ours = timed(lambda: client.add_many("ours", events))
    return base, ours


def main(n: int) -> None:
    with EmbeddedServer() as server:
        r = server.client()
        client = RedisStreamsClient(r, metrics=PrometheusMetrics(CollectorRegistry()))
        base_add, ours_add = produce(r, client, n)
        # A worker does not hold a producer's events: were they still alive, each garbage
        # collection during the consume runs would walk them, which no real worker pays.
        gc.collect()
        base_read = timed(lambda: hand_written_consume(r, "base"))
        config = ConsumerConfig(
            stream="ours",
            group="g",
            consumer="c",
            batch_size=BATCH,
            claim_interval=timedelta(seconds=1),
        )
        consumer = Consumer(client, config)
        ours_read = timed(lambda: consumer.run(lambda m: None, burst=True, handle_signals=False))
        assert consumer.stats.acked == n, consumer.stats
        version = r.info("server")["redis_version"]
    print(f"N={n} server={server.binary} ({version})")
    print(
        f"add_many   {n / ours_add:>9,.0f}/s  hand-written {n / base_add:>9,.0f}/s  "
        f"ratio {base_add / ours_add:.2f}"
    )
    print(
        f"consume    {n / ours_read:>9,.0f}/s  hand-written {n / base_read:>9,.0f}/s  "
        f"ratio {base_read / ours_read:.2f}"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000)
