"""Metrics as a hook the client and consumer call; a Prometheus implementation.

Nothing is registered at import: `PrometheusMetrics` takes the `CollectorRegistry` to use.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import redis
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from redis.exceptions import RedisClusterException

from streamlab import _args
from streamlab.errors import StreamlabError

if TYPE_CHECKING:
    from streamlab.client import ClientLike, RedisStreamsClient

__all__ = ["PROCESSING_BUCKETS", "Metrics", "PrometheusMetrics"]

_log = logging.getLogger("streamlab.metrics")

# Webhook handlers take milliseconds to a minute (API calls, clones); the buckets span both.
PROCESSING_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """What the client and consumer report; every method here does nothing.

    Subclass it and override the hooks you need (like a dramatiq Middleware); the default
    client and consumer use a plain ``Metrics()``. Counts come in batches to keep the hot path
    lean.
    """

    def produced(self, stream: str, n: int) -> None:
        """``n`` entries were added to ``stream``."""

    def consumed(self, stream: str, group: str, n: int) -> None:
        """``n`` messages were handled successfully and acked."""

    def failed(self, stream: str, group: str, n: int) -> None:
        """``n`` handler calls failed (each failure counts, retried or not)."""

    def retried(self, stream: str, group: str, n: int) -> None:
        """``n`` failed messages were scheduled for a retry."""

    def dead_lettered(self, stream: str, group: str, n: int) -> None:
        """``n`` messages were moved to the DLQ."""

    def reclaimed(self, stream: str, group: str, n: int) -> None:
        """``n`` messages were taken over from a dead or stuck consumer."""

    def lost(self, stream: str, group: str, n: int) -> None:
        """``n`` pending entries were gone (deleted or trimmed) when claimed."""

    def observe_many(self, stream: str, group: str, seconds: Sequence[float]) -> None:
        """The durations of a batch's handler calls, in seconds (one per call)."""

    def watch(self, client: ClientLike, stream: str) -> None:
        """Report the lag of ``stream``'s groups, read from Redis at scrape time. ``client``
        is any client `streamlab.client.as_client` takes."""


def lag_family() -> GaugeMetricFamily:
    """An empty ``queue_consumer_lag`` family (labels stream, group): the workers' metrics
    and ``streamlab metrics`` report the lag under the same name."""
    return GaugeMetricFamily(
        "queue_consumer_lag", "Entries not yet delivered to the group", labels=["stream", "group"]
    )


class _LagCollector(Collector):
    """``queue_consumer_lag`` read from XINFO GROUPS when Prometheus scrapes."""

    def __init__(self) -> None:
        # (id of the redis-py client, stream) -> the client, the stream
        self.watched: dict[tuple[int, str], tuple[RedisStreamsClient, str]] = {}

    def describe(self) -> Iterable[Metric]:
        # Without describe() the registry would call collect(), and so Redis, at registration.
        return [lag_family()]

    def collect(self) -> Iterable[Metric]:
        family = lag_family()
        for client, stream in list(self.watched.values()):
            try:
                info = client.get_stream_info(stream)
            except (redis.RedisError, RedisClusterException, StreamlabError):
                continue  # unreachable, no such stream yet, no right: no sample this scrape
            except Exception:
                # A bug: said, not swallowed (an empty gauge hid one), yet the scrape goes on.
                _log.exception("queue_consumer_lag of stream %r not read", stream)
                continue
            for group in info.groups:
                if group.lag is not None:
                    family.add_metric([stream, group.name], group.lag)
        yield family


class _DurationHistogram(Collector):
    """``queue_processing_duration_seconds``, fed a batch of durations at a time.

    prometheus-client's `Histogram` observes one value per call, under a lock and with a
    Python loop over the buckets: about a tenth of a message's handling on the consumer's hot
    path (bench/README.md). This collector counts a batch without the lock and adds it under
    the lock once; a scrape sees the buckets, count and sum a `Histogram` with these buckets
    exposes (not its ``_created`` sample).
    """

    name = "queue_processing_duration_seconds"
    doc = "Handler duration"

    def __init__(self, buckets: Sequence[float]) -> None:
        self._bounds = tuple(float(b) for b in buckets)
        self._lock = threading.Lock()
        # (stream, group) -> [count per bucket (the last one past every bound)], sum
        self._series: dict[tuple[str, str], tuple[list[int], list[float]]] = {}

    def add(self, labels: tuple[str, str], seconds: Sequence[float]) -> None:
        counts = [0] * (len(self._bounds) + 1)
        bounds = self._bounds
        for value in seconds:
            counts[bisect_left(bounds, value)] += 1
        total = sum(seconds)
        with self._lock:
            series = self._series.get(labels)
            if series is None:
                self._series[labels] = (counts, [total])
                return
            kept, kept_sum = series
            for i, n in enumerate(counts):
                kept[i] += n
            kept_sum[0] += total

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.name, self.doc, labels=["stream", "group"])]

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.doc, labels=["stream", "group"])
        with self._lock:
            series = [(labels, list(c), s[0]) for labels, (c, s) in self._series.items()]
        for labels, counts, total in series:
            cumulative, running = [], 0
            for bound, n in zip((*self._bounds, float("inf")), counts, strict=True):
                running += n
                cumulative.append((floatToGoString(bound), running))  # type: ignore[no-untyped-call]
            family.add_metric(list(labels), cumulative, total)
        yield family


class PrometheusMetrics(Metrics):
    """Prometheus metrics with the seed's names, labelled by stream and group.

    ``queue_messages_produced_total``, ``queue_messages_consumed_total``,
    ``queue_messages_failed_total``, ``queue_consumer_lag``,
    ``queue_processing_duration_seconds``, plus ``queue_messages_retried_total``,
    ``queue_messages_dead_lettered_total``, ``queue_messages_reclaimed_total`` and
    ``queue_messages_lost_total``.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.produced_total = Counter(
            "queue_messages_produced", "Messages produced", ["stream"], registry=registry
        )
        labels = ["stream", "group"]

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        self.consumed_total = counter("queue_messages_consumed", "Messages handled and acked")
        self.failed_total = counter("queue_messages_failed", "Handler failures")
        self.retried_total = counter("queue_messages_retried", "Failures scheduled for retry")
        self.dead_lettered_total = counter("queue_messages_dead_lettered", "Moved to the DLQ")
        self.reclaimed_total = counter("queue_messages_reclaimed", "Taken from dead consumers")
        self.lost_total = counter("queue_messages_lost", "Pending entries deleted or trimmed")
        self._durations = _DurationHistogram(PROCESSING_BUCKETS)
        registry.register(self._durations)
        self._lag = _LagCollector()
        registry.register(self._lag)

    def produced(self, stream: str, n: int) -> None:
        self.produced_total.labels(stream).inc(n)

    def consumed(self, stream: str, group: str, n: int) -> None:
        self.consumed_total.labels(stream, group).inc(n)

    def failed(self, stream: str, group: str, n: int) -> None:
        self.failed_total.labels(stream, group).inc(n)

    def retried(self, stream: str, group: str, n: int) -> None:
        self.retried_total.labels(stream, group).inc(n)

    def dead_lettered(self, stream: str, group: str, n: int) -> None:
        self.dead_lettered_total.labels(stream, group).inc(n)

    def reclaimed(self, stream: str, group: str, n: int) -> None:
        self.reclaimed_total.labels(stream, group).inc(n)

    def lost(self, stream: str, group: str, n: int) -> None:
        self.lost_total.labels(stream, group).inc(n)

    def observe_many(self, stream: str, group: str, seconds: Sequence[float]) -> None:
        if seconds:
            self._durations.add((stream, group), seconds)

    def watch(self, client: ClientLike, stream: str) -> None:
        """Report ``queue_consumer_lag`` of ``stream``'s groups through ``client`` (a
        `RedisStreamsClient`, ``redis.Redis`` or ``RedisCluster``; `TypeError` otherwise)."""
        # Imported here: streamlab.client imports this module.
        from streamlab.client import as_client

        streams = as_client(client)
        # Keyed by the redis-py client: watching again through another wrapper of it (each
        # Consumer's run, a plain redis.Redis wrapped anew) replaces the entry, not adds one.
        self._lag.watched[(id(streams.redis), _args.name("stream", stream))] = (streams, stream)
