"""A realistic incident to investigate: the notebooks and the demo start from it.

`seed_incident` writes webhook events spread over twenty minutes of event time (several event
types, eight tenants, their repositories), then runs a worker whose handler has two problems:

- a **bug**: pull requests of one tenant (``tenant-003``, whose GitHub app was reinstalled
  under a new installation id the handler's token cache does not know) raise
  ``LookupError: no token for installation 40002`` at every attempt;
- a **downstream outage**: for one minute of event time (minutes 8 to 9) every event fails with
  ``UpstreamTimeout``, and recovers afterwards.

Both end in the DLQ once their retries are spent. A second group (``audit``) lags behind, and a
worker that died (``worker-dead``) still holds a few messages, so the pending list has
something to show. `fixed_handler` is the handler with the bug fixed and the outage over: the
one to try on the DLQ and to replay with.

The run takes seconds, so the DLQ's ``failed_at`` times all fall within those seconds: plot
failures by the event's own time (``time_column="timestamp"``) to see the incident's shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from streamlab.backoff import Backoff
from streamlab.client import ClientLike, as_client
from streamlab.consumer import Consumer, ConsumerConfig, RunStats
from streamlab.events import StreamMessage
from streamlab.samples import sample_events

__all__ = [
    "BUG_EVENT_TYPE",
    "BUG_TENANT",
    "Incident",
    "UpstreamTimeout",
    "fixed_handler",
    "incident_handler",
    "seed_incident",
]

BUG_TENANT = "tenant-003"
BUG_EVENT_TYPE = "webhook.github.pull_request"
SPAN = timedelta(minutes=20)
OUTAGE = (timedelta(minutes=8), timedelta(minutes=9))


class UpstreamTimeout(Exception):
    """The CI service behind the handler did not answer."""


@dataclass(frozen=True)
class Incident:
    """What `seed_incident` wrote and did."""

    stream: str
    group: str
    dlq: str
    produced: int
    start: datetime
    outage: tuple[datetime, datetime]
    stats: RunStats
    held_by_dead_worker: int


# The handler's token cache: every tenant's installation but tenant-003's new one.
_TOKENS = {40_000 + i: f"ghs_{i:04d}" for i in range(8) if i != 2}


def _token(installation: int) -> str:
    token = _TOKENS.get(installation)
    if token is None:
        raise LookupError(f"no token for installation {installation}")
    return token


def incident_handler(start: datetime) -> Callable[[StreamMessage], None]:
    """The buggy handler, with the outage between minutes 8 and 9 of event time."""
    down_from, down_until = start + OUTAGE[0], start + OUTAGE[1]

    def handle(msg: StreamMessage) -> None:
        event = msg.event
        assert event is not None  # undecodable entries never reach a handler
        if down_from <= event.timestamp < down_until:
            raise UpstreamTimeout(
                f"POST https://ci.internal/api/builds for {event.repository} timed out after 10.0s"
            )
        if event.event_type == BUG_EVENT_TYPE:
            _token(event.payload["installation"]["id"])

    return handle


def fixed_handler(msg: StreamMessage) -> None:
    """The handler once fixed (an unknown installation's token is fetched) and the outage over."""
    event = msg.event
    assert event is not None
    if event.event_type == BUG_EVENT_TYPE:
        installation = event.payload["installation"]["id"]
        _TOKENS.get(installation) or f"ghs_fetched_{installation}"


def seed_incident(
    client: ClientLike,
    stream: str = "webhook_events",
    *,
    group: str = "webhook_workers",
    events: int = 3000,
    seed: int = 7,
    start: datetime | None = None,
) -> Incident:
    """Write ``events`` webhook events to ``stream`` and run the buggy worker over them.

    Event times span twenty minutes ending about now (or from ``start``). Returns what was
    done; the DLQ is the client's DLQ of ``stream``.
    """
    client = as_client(client)
    begin = start or datetime.now(UTC).replace(microsecond=0) - SPAN - timedelta(minutes=5)
    produced = client.add_many(
        stream, sample_events(events, seed=seed, start=begin, spacing=SPAN / events)
    )
    # A lagging second group and a worker that died with messages in hand.
    client.ensure_group(stream, "audit")
    client.redis.xreadgroup("audit", "audit-1", {stream: ">"}, count=events // 3)
    client.ensure_group(stream, group)
    held = client.redis.xreadgroup(group, "worker-dead", {stream: ">"}, count=12)
    config = ConsumerConfig(
        stream=stream,
        group=group,
        consumer="worker-1",
        batch_size=100,
        max_retries=2,
        backoff=Backoff(initial=timedelta(milliseconds=20), max=timedelta(milliseconds=50)),
        claim_min_idle=timedelta(minutes=10),  # the dead worker's messages stay pending
    )
    consumer = Consumer(client, config)
    stats = consumer.run(incident_handler(begin), burst=True, handle_signals=False)
    return Incident(
        stream=stream,
        group=group,
        dlq=consumer.dlq_stream,
        produced=len(produced),
        start=begin,
        outage=(begin + OUTAGE[0], begin + OUTAGE[1]),
        stats=stats,
        held_by_dead_worker=len(held[0][1]) if held else 0,
    )
