"""Prometheus metric values after a real run, and nothing registered at import."""

from __future__ import annotations

import logging
import subprocess
import sys
from datetime import timedelta

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest

from streamlab.backoff import Backoff
from streamlab.client import RedisStreamsClient
from streamlab.consumer import Consumer, ConsumerConfig
from streamlab.errors import ArgumentError
from streamlab.events import StreamEvent, StreamMessage
from streamlab.metrics import PrometheusMetrics
from streamlab.records import StreamInfo


def test_metric_values_after_a_burst_run(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    client = RedisStreamsClient(streams_client.redis, metrics=metrics)
    ids = client.add_many(stream_name, (StreamEvent(event_type="push") for _ in range(10)))
    flaky, poison = ids[2], {ids[5], ids[8]}

    def handler(msg: StreamMessage) -> None:
        if msg.id in poison or (msg.id == flaky and msg.delivery_count == 1):
            raise RuntimeError("no")

    cfg = ConsumerConfig(
        stream=stream_name,
        group="g",
        consumer="c",
        max_retries=2,
        backoff=Backoff(initial=timedelta(seconds=0.05)),
        claim_min_idle=timedelta(seconds=1),
    )
    stats = Consumer(client, cfg).run(handler, burst=True, handle_signals=False)

    # 7 succeed at once; the flaky one fails once then succeeds; the 2 poison ones fail on
    # all 3 attempts (2 retries each) and are dead-lettered.
    expected = {"consumed": 8, "failed": 1 + 2 * 3, "retried": 1 + 2 * 2, "dead_lettered": 2}
    labels = {"stream": stream_name, "group": "g"}
    for name, value in expected.items():
        assert registry.get_sample_value(f"queue_messages_{name}_total", labels) == value, name
    assert (stats.acked, stats.failed, stats.retried, stats.dead_lettered) == tuple(
        expected.values()
    )
    produced = registry.get_sample_value("queue_messages_produced_total", {"stream": stream_name})
    assert produced == 10
    handler_calls = 7 + 2 + 2 * 3
    assert registry.get_sample_value("queue_processing_duration_seconds_count", labels) == (
        handler_calls
    )
    assert registry.get_sample_value("queue_consumer_lag", labels) == 0
    assert registry.get_sample_value("queue_messages_reclaimed_total", labels) is None

    client.add_to_stream(stream_name, StreamEvent(event_type="late"))
    client.add_many(stream_name, (StreamEvent(event_type="late") for _ in range(2)))
    assert registry.get_sample_value("queue_consumer_lag", labels) == 3
    assert registry.get_sample_value("queue_messages_produced_total", {"stream": stream_name}) == 13


def test_watch_takes_a_plain_redis_client_and_reports_its_lag_at_scrape_time(
    redis_client: redis.Redis, stream_name: str
) -> None:
    streams = RedisStreamsClient(redis_client)
    streams.add_many(stream_name, [StreamEvent(event_type="push")] * 5)
    streams.ensure_group(stream_name, "g")
    streams.read_from_stream(stream_name, "g", "c", 2)
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    metrics.watch(redis_client, stream_name)
    labels = {"stream": stream_name, "group": "g"}
    assert registry.get_sample_value("queue_consumer_lag", labels) == 3
    # Read at each scrape; watching again through another wrapper of the same redis-py client
    # adds no second series.
    streams.add_to_stream(stream_name, StreamEvent(event_type="push"))
    metrics.watch(RedisStreamsClient(redis_client), stream_name)
    assert registry.get_sample_value("queue_consumer_lag", labels) == 4
    text = generate_latest(registry).decode()
    assert text.count(f'queue_consumer_lag{{group="g",stream="{stream_name}"}}') == 1
    # A stream that does not exist (yet) gives no sample and does not fail the scrape.
    metrics.watch(redis_client, f"{stream_name}-missing")
    assert registry.get_sample_value("queue_consumer_lag", labels) == 4


def test_watch_refuses_anything_but_a_client_and_a_stream_name(redis_url: str) -> None:
    metrics = PrometheusMetrics(CollectorRegistry())
    with pytest.raises(TypeError, match=r"not builtins\.str"):
        metrics.watch("nonsense", "s")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"not redis\.client\.Pipeline"):
        metrics.watch(redis.Redis.from_url(redis_url).pipeline(), "s")
    with pytest.raises(ArgumentError, match="stream: expected a non-empty name"):
        metrics.watch(redis.Redis.from_url(redis_url), None)  # type: ignore[arg-type]
    assert metrics._lag.watched == {}


def test_a_bug_reading_the_lag_is_logged_and_the_scrape_goes_on(
    redis_client: redis.Redis, stream_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The lag reading's errors other than Redis' and streamlab's were swallowed: an
    AttributeError left the gauge silently empty. Now it is logged; other streams report."""

    class Broken(RedisStreamsClient):
        def get_stream_info(self, stream: str) -> StreamInfo:
            raise AttributeError("a bug")

    streams = RedisStreamsClient(redis_client)
    streams.add_many(stream_name, [StreamEvent(event_type="push")] * 2)
    streams.ensure_group(stream_name, "g")
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    metrics.watch(Broken(redis_client), "other")
    metrics.watch(streams, stream_name)
    with caplog.at_level(logging.ERROR, logger="streamlab.metrics"):
        lag = registry.get_sample_value("queue_consumer_lag", {"stream": stream_name, "group": "g"})
    assert lag == 2
    [record] = caplog.records
    assert record.getMessage() == "queue_consumer_lag of stream 'other' not read"
    assert "a bug" in caplog.text


def test_importing_streamlab_registers_nothing_on_the_default_registry() -> None:
    code = """
import prometheus_client
before = set(prometheus_client.REGISTRY._names_to_collectors)
import streamlab, streamlab.consumer, streamlab.metrics, streamlab.client, streamlab.policy
from streamlab import PrometheusMetrics, Consumer
print(sorted(set(prometheus_client.REGISTRY._names_to_collectors) - before))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_two_metrics_objects_on_separate_registries_do_not_clash() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    a, b = PrometheusMetrics(first), PrometheusMetrics(second)
    a.consumed("s", "g", 2)
    b.consumed("s", "g", 5)
    labels = {"stream": "s", "group": "g"}
    assert first.get_sample_value("queue_messages_consumed_total", labels) == 2
    assert second.get_sample_value("queue_messages_consumed_total", labels) == 5


def test_metrics_base_is_a_no_op_that_a_subclass_overrides_in_part(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    from streamlab.metrics import Metrics

    class Produced(Metrics):
        def __init__(self) -> None:
            self.n = 0

        def produced(self, stream: str, n: int) -> None:
            self.n += n

    assert issubclass(PrometheusMetrics, Metrics)
    hook = Produced()
    client = RedisStreamsClient(streams_client.redis, metrics=hook)
    ids = client.add_many(stream_name, (StreamEvent(event_type="push") for _ in range(3)))

    def handler(msg: StreamMessage) -> None:
        pass

    cfg = ConsumerConfig(stream=stream_name, group="g", consumer="c")
    stats = Consumer(client, cfg).run(handler, burst=True, handle_signals=False)
    assert hook.n == 3
    assert len(ids) == 3
    assert stats.acked == 3
    assert Metrics().watch(client, stream_name) is None


def test_duration_histogram_exposes_what_a_prometheus_histogram_does() -> None:
    """Batches of durations give the samples prometheus-client's own `Histogram` gives for
    the same values one by one: every bucket (values on a bound included), count and sum."""
    from prometheus_client import Histogram

    from streamlab.metrics import PROCESSING_BUCKETS

    batches = [[0.0, 0.001, 0.0010001, 0.3, 61.0], [], [0.005, 2.5, 0.02], [1e-9] * 3]
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    metrics = PrometheusMetrics(ours)
    reference = Histogram(
        "queue_processing_duration_seconds",
        "Handler duration",
        ["stream", "group"],
        buckets=PROCESSING_BUCKETS,
        registry=theirs,
    )
    for batch in batches:
        metrics.observe_many("s", "g", batch)
        for value in batch:
            reference.labels("s", "g").observe(value)
    metrics.observe_many("other", "g", [0.2])

    def samples(
        registry: CollectorRegistry,
    ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in registry.collect()
            if family.name == "queue_processing_duration_seconds"
            for s in family.samples
            if s.labels.get("stream") == "s" and not s.name.endswith("_created")
        }

    expected = samples(theirs)
    assert len(expected) == len(PROCESSING_BUCKETS) + 1 + 2  # buckets with +Inf, count, sum
    got = samples(ours)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key
    assert (
        ours.get_sample_value(
            "queue_processing_duration_seconds_count", {"stream": "other", "group": "g"}
        )
        == 1
    )
