"""Core hot paths against hand-written redis-py, measured in one run on one private server.

    .venv/bin/python bench/bench_core.py [N [ROUNDS]]     # N = 50,000, 3 rounds

Prints events/s and the ratio streamlab / baseline (higher is better; 1.0 = as fast):
- building `StreamEvent`s and `add_many` vs a hand-written producer that builds field dicts
  (uuid4, json.dumps of the nested values, an ISO time) and pipelines XADD, both from the
  same plain values, event construction timed on both sides (users build their events);
- Consumer.run(burst=True) with a no-op handler (decode, validate, batched ack, metrics) vs a
  hand-written XREADGROUP + json.loads + XACK loop, both with batches of 500.
"""

from __future__ import annotations

import gc
import json
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
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
from streamlab.samples import sample_events

BATCH = 500


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock seconds, and this process's CPU seconds (the client's own work; time the
    VM spends elsewhere is not in it)."""
    started, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - started, time.process_time() - cpu


def specs(n: int) -> list[dict[str, Any]]:
    """What a producer starts from: plain values (no models), the same for both sides."""
    return [
        {
            "event_type": e.event_type,
            "repository": e.repository,
            "tenant_id": e.tenant_id,
            "payload": e.payload,
            "auth_context": e.auth_context.model_dump() if e.auth_context else None,
        }
        for e in sample_events(n)
    ]


def hand_written_add(r: Any, stream: str, specs: list[dict[str, Any]]) -> None:
    """A producer without streamlab: field dicts, uuid4, json.dumps, pipelined XADD."""
    pipe = r.pipeline(transaction=False)
    for i, s in enumerate(specs, 1):
        pipe.xadd(
            stream,
            {
                "id": str(uuid.uuid4()),
                "event_type": s["event_type"],
                "repository": s["repository"],
                "tenant_id": s["tenant_id"],
                "payload": json.dumps(s["payload"]),
                "auth_context": json.dumps(s["auth_context"]),
                "timestamp": datetime.now(UTC).isoformat(),
                "retry_count": "0",
            },
        )
        if i % 1000 == 0:
            pipe.execute()
    pipe.execute()


def streamlab_add(client: RedisStreamsClient, stream: str, specs: list[dict[str, Any]]) -> None:
    """The same with streamlab: a validated `StreamEvent` per event, then `add_many`."""
    client.add_many(stream, (StreamEvent(**s) for s in specs))


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


def produce(
    r: Any, client: RedisStreamsClient, n: int, base: str, ours: str
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Both producers from the same values, event construction timed (users build them)."""
    values = specs(n)
    base_add = timed(lambda: hand_written_add(r, base, values))
    ours_add = timed(lambda: streamlab_add(client, ours, values))
    return base_add, ours_add


def consumer_config(stream: str) -> ConsumerConfig:
    """streamlab's side of the consume measure: group g, batches of `BATCH`."""
    return ConsumerConfig(
        stream=stream,
        group="g",
        consumer="c",
        batch_size=BATCH,
        claim_interval=timedelta(seconds=1),
    )


def consume(
    r: Any, client: RedisStreamsClient, n: int, base: str, ours: str
) -> tuple[tuple[float, float], tuple[float, float]]:
    base_read = timed(lambda: hand_written_consume(r, base))
    consumer = Consumer(client, consumer_config(ours))
    ours_read = timed(lambda: consumer.run(lambda m: None, burst=True, handle_signals=False))
    assert consumer.stats.acked == n, consumer.stats
    return base_read, ours_read


def main(n: int, rounds: int) -> None:
    """``rounds`` rounds of both measures; each side's best time is kept (the machine's
    noise only ever slows a run down)."""
    times: dict[str, list[tuple[float, float]]] = {
        k: [] for k in ("base_add", "ours_add", "base_read", "ours_read")
    }
    with EmbeddedServer() as server:
        r = server.client()
        client = RedisStreamsClient(r, metrics=PrometheusMetrics(CollectorRegistry()))
        for i in range(rounds):
            base, ours = f"base{i}", f"ours{i}"
            base_add, ours_add = produce(r, client, n, base, ours)
            # A worker does not hold a producer's events: were they still alive, each garbage
            # collection during the consume runs would walk them, which no real worker pays.
            gc.collect()
            base_read, ours_read = consume(r, client, n, base, ours)
            r.delete(base, ours)
            for key, value in zip(times, (base_add, ours_add, base_read, ours_read), strict=True):
                times[key].append(value)
        version = r.info("server")["redis_version"]
    best = {key: min(wall for wall, _ in values) for key, values in times.items()}
    cpu = {key: min(c for _, c in values) for key, values in times.items()}
    print(f"N={n} server={server.binary} ({version}), best of {rounds} rounds")
    for name, base_key, ours_key in (
        ("add_many", "base_add", "ours_add"),
        ("consume", "base_read", "ours_read"),
    ):
        ratios = " ".join(
            f"{b[0] / o[0]:.2f}" for b, o in zip(times[base_key], times[ours_key], strict=True)
        )
        print(
            f"{name:<10} {n / best[ours_key]:>9,.0f}/s  "
            f"hand-written {n / best[base_key]:>9,.0f}/s  "
            f"ratio {best[base_key] / best[ours_key]:.2f}  (per round: {ratios}; "
            f"client CPU ratio {cpu[base_key] / cpu[ours_key]:.2f})"
        )


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 50_000,
        int(sys.argv[2]) if len(sys.argv) > 2 else 3,
    )
