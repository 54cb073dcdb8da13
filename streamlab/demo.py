"""`streamlab demo`: the whole flow on a private server, in a few seconds.

Produce realistic webhook events, run a consumer whose handler fails for a deterministic
subset (a permanent bug for one repository's pull requests, a transient error for one event in
ten), and report produced / acked / retried / dead-lettered counts.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

from streamlab.backoff import Backoff
from streamlab.client import RedisStreamsClient, connect_any
from streamlab.consumer import Consumer, ConsumerConfig, RunStats
from streamlab.embedded import EmbeddedServer
from streamlab.events import StreamMessage
from streamlab.keys import is_cluster
from streamlab.samples import sample_events

__all__ = ["DemoResult", "demo_handler", "run_demo", "server_url"]

BROKEN_REPOSITORY = "initech/billing"


class UpstreamTimeout(Exception):
    """A transient failure: the downstream API timed out."""


class SchemaError(Exception):
    """A permanent failure: the handler cannot process this payload."""


def demo_handler(seen: Counter[str]) -> Callable[[StreamMessage], None]:
    """A handler that fails permanently for one repository's pull requests and transiently
    (first attempt only) for one event in ten."""

    def handle(msg: StreamMessage) -> None:
        event = msg.event
        assert event is not None  # the consumer dead-letters undecodable entries itself
        seen[event.id] += 1
        if event.repository == BROKEN_REPOSITORY and event.event_type.endswith("pull_request"):
            number = event.payload.get("number")
            raise SchemaError(f"pull request {number}: missing field 'head.repo'")
        digest = hashlib.blake2b(event.id.encode(), digest_size=1).digest()[0]
        if digest % 10 == 0 and seen[event.id] == 1:
            raise UpstreamTimeout(f"GET /repos/{event.repository} timed out after 10s")

    return handle


@dataclass
class DemoResult:
    """What the demo did."""

    url: str
    stream: str
    dlq: str
    produced: int
    stats: RunStats
    dlq_length: int
    pending: int
    seconds: float
    dlq_errors: Counter[str] = field(default_factory=Counter)


@contextmanager
def server_url(url: str | None) -> Iterator[str]:
    """``url`` when given, else a private embedded server for the duration."""
    if url:
        yield url
        return
    with EmbeddedServer() as server:
        yield server.url


def run_demo(
    url: str, *, events: int = 3000, seed: int = 0, stream: str | None = None
) -> DemoResult:
    """Run the demo against ``url`` on a fresh stream name (nothing existing is touched)."""
    started = time.monotonic()
    redis_client = connect_any(url)
    name = stream or f"webhook_events:demo-{uuid.uuid4().hex[:6]}"
    if stream is None and is_cluster(redis_client):
        name = f"{{{name}}}"  # on a cluster a hash tag keeps the DLQ in the stream's slot
    try:
        client = RedisStreamsClient(redis_client)
        produced = len(client.add_many(name, sample_events(events, seed=seed)))
        config = ConsumerConfig(
            stream=name,
            group="webhook_workers",
            consumer="demo-worker-1",
            batch_size=100,
            max_retries=3,
            # The seed's schedule (immediate, 1 s, 2 s) scaled down so the demo takes seconds.
            backoff=Backoff(initial=timedelta(milliseconds=200)),
            claim_min_idle=timedelta(seconds=5),
        )
        seen: Counter[str] = Counter()
        consumer = Consumer(client, config)
        stats = consumer.run(demo_handler(seen), burst=True, handle_signals=False)
        dlq = client.read_dlq(name)
        errors = Counter(m.failure.error_type for m in dlq if m.failure)
        info = client.get_stream_info(name)
        pending = sum(g.pending for g in info.groups)
    finally:
        redis_client.close()
    seconds = time.monotonic() - started
    return DemoResult(
        url, name, consumer.dlq_stream, produced, stats, len(dlq), pending, seconds, errors
    )
