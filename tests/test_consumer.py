"""The consumer against a real server: backoff timing, group isolation, DLQ contents,
undecodable entries, retention, the manual API and replay skips."""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from streamlab.backoff import Backoff
from streamlab.client import RedisStreamsClient, connect
from streamlab.consumer import Consumer, ConsumerConfig, RunStats
from streamlab.embedded import EmbeddedServer
from streamlab.errors import ArgumentError, ConfigError, NotFoundError, Reject, Retry
from streamlab.events import StreamEvent, StreamMessage, encode_event
from streamlab.policy import RETRY_CONSUMER, Action
from streamlab.records import DLQ_FIELDS, ReplayMarker

# A retry must never come early; it may come late by the time one claim poll and the
# handler's bookkeeping take. Early slack covers Redis' millisecond idle-time rounding.
EARLY = 0.05
LATE = 0.4


def event(n: int = 0, event_type: str = "push") -> StreamEvent:
    return StreamEvent(
        id=f"evt-{n}", event_type=event_type, repository="acme/api", payload={"n": n}
    )


def add(client: RedisStreamsClient, stream: str, n: int, event_type: str = "push") -> list[str]:
    return client.add_many(stream, (event(i, event_type) for i in range(n)))


def config(stream: str, group: str = "g", **kwargs: Any) -> ConsumerConfig:
    kwargs.setdefault("consumer", "c1")
    kwargs.setdefault("block_duration", timedelta(seconds=0.2))
    return ConsumerConfig(stream=stream, group=group, **kwargs)


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def assert_schedule(times: list[float], expected: list[float]) -> None:
    actual = gaps(times)
    assert len(actual) == len(expected), actual
    for got, want in zip(actual, expected, strict=True):
        assert want - EARLY <= got <= want + LATE, f"gaps {actual} vs schedule {expected}"


def run_failing(
    url: str,
    cfg: ConsumerConfig,
    fail: Callable[[int], None],
    calls_expected: int,
    *,
    burst: bool,
) -> tuple[list[float], RunStats]:
    """Run a consumer on one entry whose handler calls ``fail(attempt)``; record call times.

    Not in burst mode, the handler sets the stop event on its last expected call.
    """
    times: list[float] = []
    stop = threading.Event()

    def handler(msg: StreamMessage) -> None:
        times.append(time.monotonic())
        if len(times) >= calls_expected:
            stop.set()
        fail(len(times))

    consumer = Consumer(RedisStreamsClient(connect(url)), cfg)
    stats = consumer.run(handler, burst=burst, handle_signals=False, stop_event=stop)
    return times, stats


def always(attempt: int) -> None:
    raise ValueError(f"attempt {attempt} failed")


def dlq_entries(client: RedisStreamsClient, stream: str) -> list[StreamMessage]:
    return client.read_dlq(stream)


def pending_count(r: redis.Redis, stream: str, group: str) -> int:
    return int(r.xpending(stream, group)["pending"])


# -- backoff -------------------------------------------------------------------------------


def test_seed_backoff_schedule_is_honoured_in_burst_and_in_a_long_run(
    redis_url: str, streams_client: RedisStreamsClient, stream_name: str
) -> None:
    # Seed default: first retry immediate, then 1 s, then 2 s, then the DLQ (max_retries=3).
    streams = [f"{stream_name}-burst", f"{stream_name}-run"]
    for s in streams:
        add(streams_client, s, 1)
    cfgs = [config(s, claim_min_idle=timedelta(seconds=5)) for s in streams]
    with ThreadPoolExecutor(2) as pool:
        burst, run = (
            pool.submit(run_failing, redis_url, cfg, always, 4, burst=mode)
            for cfg, mode in zip(cfgs, (True, False), strict=True)
        )
        results = [burst.result(timeout=30), run.result(timeout=30)]
    for s, (times, stats) in zip(streams, results, strict=True):
        assert_schedule(times, [0.0, 1.0, 2.0])
        assert (stats.failed, stats.retried, stats.dead_lettered) == (4, 3, 1)
        [dead] = dlq_entries(streams_client, s)
        assert dead.fields["dlq_attempts"] == b"4"
        assert pending_count(streams_client.redis, s, "g") == 0


def test_custom_backoff_retry_delay_and_reject(
    redis_url: str, streams_client: RedisStreamsClient, stream_name: str
) -> None:
    names = [f"{stream_name}-{k}" for k in ("custom", "retry", "reject")]
    for s in names:
        add(streams_client, s, 1)
    custom = config(
        names[0],
        backoff=Backoff(initial=timedelta(seconds=0.2), multiplier=3),
        claim_min_idle=timedelta(seconds=1),
    )

    def retry_then_succeed(attempt: int) -> None:
        if attempt < 3:
            raise Retry("later", delay=(0.5, 0.3)[attempt - 1])

    def reject(attempt: int) -> None:
        raise Reject("never valid")

    jobs = [
        (custom, always, 4),
        (config(names[1], claim_min_idle=timedelta(seconds=2)), retry_then_succeed, 3),
        (config(names[2], claim_min_idle=timedelta(seconds=2)), reject, 1),
    ]
    with ThreadPoolExecutor(3) as pool:
        futures = [
            pool.submit(run_failing, redis_url, cfg, fail, n, burst=True) for cfg, fail, n in jobs
        ]
        (c_times, c_stats), (r_times, r_stats), (j_times, j_stats) = (
            f.result(timeout=30) for f in futures
        )
    # Backoff(initial=0.2, multiplier=3): immediate, 0.2 s, 0.6 s, then the DLQ.
    assert_schedule(c_times, [0.0, 0.2, 0.6])
    assert c_stats.dead_lettered == 1
    # Retry(delay=...) overrides the schedule: 0.5 s then 0.3 s, then success.
    assert_schedule(r_times, [0.5, 0.3])
    assert (r_stats.retried, r_stats.acked, r_stats.dead_lettered) == (2, 1, 0)
    assert dlq_entries(streams_client, names[1]) == []
    # Reject: one call, straight to the DLQ.
    assert len(j_times) == 1
    assert (j_stats.retried, j_stats.dead_lettered) == (0, 1)
    [dead] = dlq_entries(streams_client, names[2])
    assert dead.fields["dlq_error_type"] == b"Reject"
    assert dead.fields["dlq_attempts"] == b"1"
    for s in names:
        assert pending_count(streams_client.redis, s, "g") == 0


# -- groups ------------------------------------------------------------------------------------


def test_a_retry_for_group_a_never_reaches_group_b(
    redis_url: str, streams_client: RedisStreamsClient, stream_name: str
) -> None:
    ids = add(streams_client, stream_name, 8)
    failing = {ids[1], ids[4], ids[6]}
    seen: dict[str, list[tuple[str, int]]] = {"A": [], "B": []}

    def handler_for(group: str) -> Callable[[StreamMessage], None]:
        def handler(msg: StreamMessage) -> None:
            seen[group].append((msg.id, msg.delivery_count))
            if group == "A" and msg.id in failing and msg.delivery_count == 1:
                raise RuntimeError("A fails once")

        return handler

    # Both groups run at the same time, A's retries waiting 0.3 s while B reads.
    cfgs = {
        g: config(
            stream_name,
            g,
            max_retries=1,
            backoff=Backoff(initial=timedelta(seconds=0.3), first_immediate=False),
            claim_min_idle=timedelta(seconds=1),
        )
        for g in ("A", "B")
    }
    for g in cfgs:
        streams_client.ensure_group(stream_name, g)
    with ThreadPoolExecutor(2) as pool:
        futures = {
            g: pool.submit(
                Consumer(RedisStreamsClient(connect(redis_url)), cfg).run,
                handler_for(g),
                burst=True,
                handle_signals=False,
            )
            for g, cfg in cfgs.items()
        }
        stats = {g: f.result(timeout=30) for g, f in futures.items()}
    assert sorted(seen["B"]) == [(i, 1) for i in ids]
    assert stats["B"].retried == 0
    assert Counter(i for i, _ in seen["A"]) == {i: 2 if i in failing else 1 for i in ids}
    assert sorted(x for x in seen["A"] if x[1] == 2) == sorted((i, 2) for i in failing)
    assert stats["A"].retried == 3
    for g in cfgs:
        assert pending_count(streams_client.redis, stream_name, g) == 0


# -- poison messages and the DLQ record ------------------------------------------------------


def poison_handler(msg: StreamMessage) -> None:
    if msg.event is not None and msg.event.event_type == "poison":
        raise ValueError("cannot digest this")


def test_poison_message_lands_in_the_dlq_once_with_its_failure_record(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    r = streams_client.redis
    good = add(streams_client, stream_name, 3)
    [poison_id] = add(streams_client, stream_name, 1, event_type="poison")
    good += add(streams_client, stream_name, 2)
    [(_, original)] = r.xrange(stream_name, poison_id, poison_id)
    cfg = config(
        stream_name,
        max_retries=2,
        backoff=Backoff(initial=timedelta(seconds=0.05)),
        claim_min_idle=timedelta(seconds=1),
        traceback_limit=300,
    )
    before = datetime.now(UTC)
    consumer = Consumer(streams_client, cfg)
    stats = consumer.run(poison_handler, burst=True, handle_signals=False)

    assert (stats.acked, stats.failed, stats.retried, stats.dead_lettered) == (5, 3, 2, 1)
    assert stats.errors == {"ValueError": 3}
    [dead] = streams_client.read_dlq(stream_name)
    assert streams_client.read_dlq(stream_name, since=dead.id, limit=1) == [dead]
    failure = dead.failure
    assert failure is not None
    assert failure.error == "cannot digest this"
    assert failure.error_type == "ValueError"
    assert "poison_handler" in failure.traceback
    assert "ValueError: cannot digest this" in failure.traceback
    assert 0 < len(failure.traceback) <= 300
    assert failure.attempts == cfg.max_retries + 1
    assert (failure.source_stream, failure.source_id) == (stream_name, poison_id)
    assert (failure.group, failure.consumer) == ("g", "c1")
    assert before <= failure.failed_at <= datetime.now(UTC)
    # The original fields, byte for byte, next to the dlq_* fields.
    [(_, raw)] = r.xrange(consumer.config.dlq_stream, dead.id, dead.id)
    assert {k: v for k, v in raw.items() if k.decode() not in DLQ_FIELDS} == original
    assert {k.decode() for k in raw} - {k.decode() for k in original} == set(DLQ_FIELDS)
    assert pending_count(r, stream_name, "g") == 0
    assert r.xlen(stream_name) == 6  # the DLQ move acks; it does not delete the source entry


def test_scripts_flushed_before_every_settle_lose_nothing(private_server: EmbeddedServer) -> None:
    """A batch settles in one packed write; when the server has forgotten the dead-letter
    script (SCRIPT FLUSH, a restart without its script cache), the calls refused with
    NOSCRIPT did not run, so they are sent again once it is loaded: each poison entry is in
    the DLQ exactly once, and the batch's acks and retries are not repeated or lost. A
    private server: the test flushes its scripts."""
    r = private_server.client()
    client = RedisStreamsClient(r)
    stream = "flushed"
    add(client, stream, 3)
    poison = add(client, stream, 4, event_type="poison")
    add(client, stream, 3)
    consumer = Consumer(client, config(stream, max_retries=0))
    settle = consumer._settle

    def flushing_settle(*args: Any) -> RunStats:
        r.script_flush()
        return settle(*args)

    consumer._settle = flushing_settle  # type: ignore[method-assign]
    r.config_resetstat()
    stats = consumer.run(poison_handler, burst=True, handle_signals=False)
    assert (stats.acked, stats.dead_lettered) == (6, 4)
    # Each dead letter was refused (NOSCRIPT; the consumer's other script, which prunes
    # consumers, may be refused too), then sent again and run once.
    assert r.info("commandstats")["cmdstat_evalsha"]["failed_calls"] >= 4
    assert sorted(d.failure.source_id for d in client.read_dlq(stream) if d.failure) == poison
    assert pending_count(r, stream, "g") == 0
    r.close()


# -- undecodable entries -----------------------------------------------------------------------


BAD_ENTRIES: dict[str, tuple[dict[str | bytes, bytes], str]] = {
    "bad-payload": ({"event_type": b"push", "payload": b"{not json"}, "payload"),
    "bad-auth": ({"event_type": b"push", "auth_context": b'{"tenant_id": '}, "auth_context"),
    "auth-not-object": ({"event_type": b"push", "auth_context": b"[1, 2]"}, "auth_context"),
    "no-event-type": ({"repository": b"acme/api", "payload": b"{}"}, "event_type"),
    "bad-retry-count": ({"event_type": b"push", "retry_count": b"abc"}, "retry_count"),
    "binary-garbage": ({"event_type": b"\xff\xfe\x00\x9c garbage"}, "event_type"),
    # A field name that is not UTF-8 reaches the DLQ byte for byte too.
    "binary-field-name": ({b"\xfe\xff name": b"x", "payload": b"{}"}, "event_type"),
}


def _names(fields: dict[str | bytes, bytes]) -> dict[str, bytes]:
    """Field names as `StreamMessage.fields` has them (bytes names: surrogate escapes)."""
    return {
        k.decode("utf-8", "surrogateescape") if isinstance(k, bytes) else k: v
        for k, v in fields.items()
    }


def test_undecodable_entries_go_to_the_dlq_at_once_and_never_block_the_group(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    r = streams_client.redis
    good_ids: list[str] = []
    bad_ids: dict[str, str] = {}
    for name, (fields, _) in BAD_ENTRIES.items():
        good_ids.append(streams_client.add_to_stream(stream_name, event(len(good_ids))))
        bad_ids[r.xadd(stream_name, fields).decode()] = name
    # Binary garbage in a field streamlab does not know is kept, not an error.
    odd = {**encode_event(event(99)), "blob": b"\x00\xff\xfe"}
    good_ids.append(streams_client.add_to_stream(stream_name, odd))
    handled: list[StreamMessage] = []
    stats = Consumer(streams_client, config(stream_name, batch_size=4)).run(
        handled.append, burst=True, handle_signals=False
    )

    assert [m.id for m in handled] == good_ids
    assert handled[-1].event is not None
    assert handled[-1].event.extra["blob"] == b"\x00\xff\xfe"
    assert (stats.dead_lettered, stats.retried, stats.acked) == (len(bad_ids), 0, len(good_ids))
    assert stats.errors == {"DecodeError": len(bad_ids)}
    dead = streams_client.read_dlq(stream_name)
    assert sorted(m.fields["dlq_source_id"].decode() for m in dead) == sorted(bad_ids)
    for msg in dead:
        source = msg.fields["dlq_source_id"].decode()
        fields, field_name = BAD_ENTRIES[bad_ids[source]]
        assert msg.fields["dlq_error_type"] == b"DecodeError"
        assert msg.fields["dlq_attempts"] == b"1"
        error = msg.fields["dlq_error"].decode()
        assert source in error
        assert repr(field_name) in error, error
        assert {k: v for k, v in msg.fields.items() if k not in DLQ_FIELDS} == _names(fields)
    assert pending_count(r, stream_name, "g") == 0


def test_bad_values_among_entries_of_the_own_layout_fail_alone(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    """New entries are decoded in runs (see Consumer._messages); a bad value in streamlab's
    own layout, mid-run, sends that entry alone to the DLQ and every other is handled, in
    order, with its own event."""
    r = streams_client.redis
    bad = {5: ("payload", b"{not json"), 20: ("retry_count", b"-1"), 21: ("auth_context", b"[")}
    ids: list[str] = []
    for n in range(40):
        fields = encode_event(event(n))
        if n in bad:
            name, value = bad[n]
            fields = {**fields, name: value}
        ids.append(r.xadd(stream_name, fields).decode())
    handled: list[StreamMessage] = []
    stats = Consumer(streams_client, config(stream_name, batch_size=50)).run(
        handled.append, burst=True, handle_signals=False
    )
    good = [n for n in range(40) if n not in bad]
    assert [m.id for m in handled] == [ids[n] for n in good]
    assert [m.event.payload for m in handled if m.event] == [{"n": n} for n in good]
    assert (stats.dead_lettered, stats.acked) == (3, 37)
    dead = {
        m.fields["dlq_source_id"].decode(): m.fields["dlq_error"].decode()
        for m in streams_client.read_dlq(stream_name)
    }
    assert sorted(dead) == sorted(ids[n] for n in bad)
    for n, (name, _) in bad.items():
        assert repr(name) in dead[ids[n]], dead[ids[n]]


def test_the_dlq_is_the_clients_routing_and_a_consumer_never_changes_it(
    redis_client: redis.Redis, stream_name: str
) -> None:
    failed = f"{stream_name}:failed"
    client = RedisStreamsClient(redis_client, dlq_names={stream_name: failed})
    add(client, stream_name, 2)

    def reject(msg: StreamMessage) -> None:
        raise Reject("bad")

    # Without a dlq_stream of its own the consumer writes where the client routes.
    consumer = Consumer(client, config(stream_name))
    assert consumer.dlq_stream == failed
    consumer.run(reject, burst=True, handle_signals=False)
    assert redis_client.xlen(failed) == 2
    assert not redis_client.exists(f"{stream_name}_dlq")
    assert [m.failure.error for m in client.read_dlq(stream_name) if m.failure] == ["bad"] * 2
    # The same name in the config agrees with the routing.
    assert Consumer(client, config(stream_name, dlq_stream=failed)).dlq_stream == failed

    # A config naming another DLQ than the client's routing is a mistake, said at once, and
    # building a consumer leaves the client's routing as it was.
    plain = RedisStreamsClient(redis_client)
    with pytest.raises(ConfigError, match=r"dlq_names=\{.*:failed"):
        Consumer(plain, config(stream_name, dlq_stream=failed))
    with pytest.raises(ConfigError, match="elsewhere"):
        Consumer(client, config(stream_name, dlq_stream="elsewhere"))
    assert dict(plain.dlq_names) == {}
    assert plain.dlq_stream(stream_name) == f"{stream_name}_dlq"
    with pytest.raises(TypeError):
        client.dlq_names[stream_name] = "x"  # type: ignore[index]


def test_the_config_a_consumer_holds_names_the_dlq_it_writes(
    redis_client: redis.Redis, stream_name: str
) -> None:
    elsewhere = f"{stream_name}:elsewhere"
    client = RedisStreamsClient(redis_client, dlq_names={stream_name: elsewhere})
    [entry] = add(client, stream_name, 1)
    default = config(stream_name)
    assert default.dlq_stream is None, "a config alone cannot know its client's routing"

    consumer = Consumer(client, default)
    assert consumer.config.dlq_stream == consumer.dlq_stream == elsewhere
    assert consumer.config == default.model_copy(update={"dlq_stream": elsewhere})

    def reject(msg: StreamMessage) -> None:
        raise Reject("bad")

    assert consumer.run(reject, burst=True, handle_signals=False).dead_lettered == 1
    [(_, fields)] = redis_client.xrange(consumer.config.dlq_stream)
    assert (fields[b"dlq_source_id"].decode(), fields[b"dlq_error"]) == (entry, b"bad")
    assert not redis_client.exists(f"{stream_name}_dlq")
    # Both configs survive a round trip (a worker given them as JSON): the default one still
    # means "where the client routes", the held one still agrees with the client.
    for held in (default, consumer.config):
        copy = ConsumerConfig.model_validate_json(held.model_dump_json())
        assert Consumer(client, copy).config.dlq_stream == elsewhere
    with pytest.raises(ConfigError, match="elsewhere"):
        Consumer(RedisStreamsClient(redis_client), consumer.config)


def test_the_dead_letter_log_names_the_dlq_the_entry_went_to(
    redis_client: redis.Redis, stream_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    failed = f"{stream_name}_failed"
    client = RedisStreamsClient(redis_client, dlq_names={stream_name: failed})
    [entry] = add(client, stream_name, 1)

    def reject(msg: StreamMessage) -> None:
        raise Reject("bad")

    with caplog.at_level(logging.INFO, logger="streamlab.consumer"):
        Consumer(client, config(stream_name)).run(reject, burst=True, handle_signals=False)
    [record] = [r for r in caplog.records if r.getMessage().startswith("dead-lettered")]
    [(dlq_id, _)] = redis_client.xrange(failed)
    assert (
        record.getMessage()
        == f"dead-lettered {entry} to {failed} as {dlq_id.decode()} after 1 deliveries"
    )
    assert record.__dict__["dlq"] == failed
    assert not redis_client.exists(f"{stream_name}_dlq")


# -- DLQ retention and length ------------------------------------------------------------------


def test_dlq_retention_trims_entries_older_than_it(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    r = streams_client.redis
    cfg = config(stream_name, dlq_retention=timedelta(hours=1))
    week_ago = int((datetime.now(UTC) - timedelta(days=7)).timestamp() * 1000)
    dlq = streams_client.dlq_stream(stream_name)
    r.xadd(dlq, {"dlq_error": b"old", "dlq_error_type": b"Old"}, id=f"{week_ago}-0")
    recent = int((datetime.now(UTC) - timedelta(minutes=5)).timestamp() * 1000)
    recent_id = r.xadd(dlq, {"dlq_error": b"recent", "dlq_error_type": b"Old"}, id=recent)
    add(streams_client, stream_name, 1)

    def reject(msg: StreamMessage) -> None:
        raise Reject("no")

    Consumer(streams_client, cfg).run(reject, burst=True, handle_signals=False)
    dead = streams_client.read_dlq(stream_name)
    assert [m.fields["dlq_error"] for m in dead] == [b"recent", b"no"]
    assert dead[0].id == recent_id.decode()


def test_dlq_maxlen_bounds_the_dlq(streams_client: RedisStreamsClient, stream_name: str) -> None:
    # MAXLEN ~ trims whole radix-tree nodes, so the DLQ may exceed dlq_maxlen by up to one
    # node (stream-node-max-entries); with many more entries than that it must stay bounded.
    setting = "stream-node-max-entries"
    node = int(streams_client.redis.config_get(setting)[setting])
    maxlen = 10
    total = maxlen + 2 * node + 20
    streams_client.add_many(stream_name, (event(i) for i in range(total)))

    def reject(msg: StreamMessage) -> None:
        raise Reject("no")

    cfg = config(stream_name, dlq_maxlen=maxlen, batch_size=50)
    consumer = Consumer(streams_client, cfg)
    stats = consumer.run(reject, burst=True, handle_signals=False)
    assert stats.dead_lettered == total
    length = streams_client.redis.xlen(consumer.dlq_stream)
    assert maxlen <= length <= maxlen + node
    # What is kept is the newest.
    [last] = streams_client.redis.xrevrange(consumer.dlq_stream, count=1)
    assert last[1][b"dlq_source_id"] == streams_client.redis.xrevrange(stream_name, count=1)[0][0]


# -- the manual API ----------------------------------------------------------------------------


def read_until(consumer: Consumer, want: int, timeout: float = 5.0) -> list[StreamMessage]:
    got: list[StreamMessage] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += consumer.read_messages(block=0.1)
    return got


def test_read_ack_nack_by_hand(streams_client: RedisStreamsClient, stream_name: str) -> None:
    r = streams_client.redis
    ids = add(streams_client, stream_name, 3)
    streams_client.ensure_group(stream_name, "g")
    cfg = config(
        stream_name,
        max_retries=1,
        backoff=Backoff(initial=timedelta(seconds=0.2), first_immediate=False),
        claim_min_idle=timedelta(seconds=1),
    )
    consumer = Consumer(streams_client, cfg)
    batch = consumer.read_messages(block=1)
    assert [(m.id, m.delivery_count) for m in batch] == [(i, 1) for i in ids]
    assert consumer.ack_message(ids[0]) == 1
    assert consumer.nack_message(ids[1], ValueError("boom")) is Action.RETRY
    assert consumer.nack_message(ids[2]) is Action.RETRY
    # Waiting retries are pending, owned by the retry placeholder, not by c1.
    rows = r.xpending_range(stream_name, "g", "-", "+", 10)
    assert {(x["message_id"].decode(), x["consumer"].decode()) for x in rows} == {
        (ids[1], RETRY_CONSUMER),
        (ids[2], RETRY_CONSUMER),
    }
    assert consumer.read_messages(block=0) == []  # not due before 0.2 s
    again = read_until(consumer, 2)
    assert sorted((m.id, m.delivery_count) for m in again) == [(ids[1], 2), (ids[2], 2)]
    assert consumer.ack_message(ids[2]) == 1
    # Retries spent (max_retries=1): the second nack dead-letters.
    assert consumer.nack_message(ids[1], ValueError("boom again")) is Action.DEAD_LETTER
    [dead] = streams_client.read_dlq(stream_name)
    assert dead.fields["dlq_source_id"].decode() == ids[1]
    assert dead.fields["dlq_attempts"] == b"2"
    assert dead.fields["dlq_error"] == b"boom again"
    assert pending_count(r, stream_name, "g") == 0
    assert (consumer.stats.acked, consumer.stats.retried, consumer.stats.dead_lettered) == (
        2,
        2,
        1,
    )


# -- replayed entries --------------------------------------------------------------------------


class Ids(list[str]):
    """Ids of the messages a handler was given."""

    def append_id(self, msg: StreamMessage) -> None:
        self.append(msg.id)


def test_entry_replayed_for_another_group_is_acked_and_skipped(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    ids = add(streams_client, stream_name, 2)
    marker = ReplayMarker("run-1", "1-1", 1, datetime.now(UTC), "A").to_fields()
    replayed = {**encode_event(event(7)), **marker}
    ids.append(streams_client.add_to_stream(stream_name, replayed))
    handled = {"A": Ids(), "B": Ids()}
    stats: dict[str, RunStats] = {}
    for group in ("A", "B"):
        stats[group] = Consumer(streams_client, config(stream_name, group)).run(
            handled[group].append_id, burst=True, handle_signals=False
        )
    assert handled["A"] == ids
    assert handled["B"] == ids[:2]
    assert (stats["B"].skipped, stats["B"].acked, stats["A"].skipped) == (1, 2, 0)
    for group in ("A", "B"):
        assert pending_count(streams_client.redis, stream_name, group) == 0


def test_nack_and_ack_of_an_id_not_in_hand(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    """An unknown id: nack raises NotFoundError (a KeyError) naming it and the stream, ack
    acks nothing and says so (0), as the client's ack does; neither touches the group."""
    r = streams_client.redis
    [entry] = add(streams_client, stream_name, 1)
    streams_client.ensure_group(stream_name, "g")
    consumer = Consumer(streams_client, config(stream_name))
    with pytest.raises(
        NotFoundError, match=rf"^entry 1-1 is not in stream '{re.escape(stream_name)}'$"
    ):
        consumer.nack_message("1-1", ValueError("boom"))
    with pytest.raises(KeyError):
        consumer.nack_message("1-1")
    assert consumer.ack_message("1-1") == 0
    assert consumer.ack_message(entry) == 0  # never delivered: not pending
    # Bad ids and errors are argument errors, before anything is sent.
    for bad in ("zzz", None, 17):
        with pytest.raises(ArgumentError, match="message_id: "):
            consumer.nack_message(bad)  # type: ignore[arg-type]
        with pytest.raises(ArgumentError, match="message_id: "):
            consumer.ack_message(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="error must be an exception or None, not str"):
        consumer.nack_message(entry, "boom")  # type: ignore[arg-type]
    assert pending_count(r, stream_name, "g") == 0
    assert not r.exists(streams_client.dlq_stream(stream_name))
    # The entry is still there to read and settle by hand, by a bytes id too.
    [msg] = consumer.read_messages(block="10ms")
    assert consumer.nack_message(msg.id.encode()) is Action.RETRY  # type: ignore[arg-type]


def test_consumer_arguments_are_checked_before_anything_is_read(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    add(streams_client, stream_name, 1)
    streams_client.ensure_group(stream_name, "g")
    cfg = config(stream_name)
    with pytest.raises(TypeError, match="config must be a ConsumerConfig, not dict"):
        Consumer(streams_client, {"stream": stream_name, "group": "g"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="metrics must be a streamlab Metrics"):
        Consumer(streams_client, cfg, metrics="prometheus")  # type: ignore[arg-type]
    consumer = Consumer(streams_client, cfg)
    with pytest.raises(TypeError, match="handler must be callable, not NoneType"):
        consumer.run(None, burst=True, handle_signals=False)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"stop_event must be a threading\.Event"):
        consumer.run(print, burst=True, handle_signals=False, stop_event=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="handler must be callable"):
        consumer.process([], "print")  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match=r"batch\[0\]: expected a StreamMessage"):
        consumer.process(["1-1"], print)  # type: ignore[list-item]
    with pytest.raises(ArgumentError, match="block: duration -1 is negative"):
        consumer.read_messages(block=-1)
    assert not streams_client.redis.exists(f"{stream_name}_dlq")
    # Nothing was read: the entry is still new to the group, and a duration text works.
    [msg] = consumer.read_messages(block="0.5s")
    assert msg.delivery_count == 1


def test_consumer_config_takes_a_schedule_longer_than_claim_min_idle() -> None:
    # Retries no longer wait on the claim clock (tests/test_retry_delays.py); only a delay
    # past 30 days is refused.
    ConsumerConfig(stream="s", group="g", claim_min_idle=timedelta(seconds=1))
    with pytest.raises(ValueError, match="30 days"):
        ConsumerConfig(
            stream="s", group="g", backoff=Backoff(max=timedelta(days=31)), max_retries=40
        )


def test_a_late_nack_does_not_take_back_a_message_another_consumer_took_over(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    """A handler slower than claim_min_idle: another consumer has taken the message over by
    the time it fails. The failure must not hand the message to the retry queue under the
    new owner's feet."""
    r = streams_client.redis
    [entry] = streams_client.add_many(stream_name, [StreamEvent(event_type="push")])
    config = ConsumerConfig(stream=stream_name, group="g", consumer="slow")
    streams_client.ensure_group(stream_name, "g")
    slow = Consumer(streams_client, config)
    [msg] = slow.read_messages(block=0.01)
    time.sleep(0.05)
    r.xclaim(stream_name, "g", "rescuer", 0, [entry])  # the takeover, just now

    assert slow.nack_message(msg.id, ValueError("late")) is None
    [row] = r.xpending_range(stream_name, "g", "-", "+", 10)
    assert (row["consumer"], row["times_delivered"]) == (b"rescuer", 2)
    assert slow.stats.retried == 0
    assert r.xlen(streams_client.dlq_stream(stream_name)) == 0

    # Without a takeover, the same late failure is handed to the retry queue as usual.
    [entry2] = streams_client.add_many(stream_name, [StreamEvent(event_type="push")])
    [msg2] = slow.read_messages(block=0.01)
    time.sleep(0.05)
    assert slow.nack_message(msg2.id, ValueError("late")) is Action.RETRY
    owners = {
        x["message_id"].decode(): x["consumer"]
        for x in r.xpending_range(stream_name, "g", "-", "+", 10)
    }
    assert owners == {entry: b"rescuer", entry2: RETRY_CONSUMER.encode()}


@pytest.mark.parametrize("delay", [float("nan"), float("inf")])
def test_a_retry_with_a_delay_that_is_not_a_number_does_not_crash_the_worker(
    streams_client: RedisStreamsClient, stream_name: str, delay: float
) -> None:
    # Retry(delay=nan) crashed the worker while it set the retry's idle time (int(nan)).
    add(streams_client, stream_name, 1)
    seen: list[int] = []

    def handler(msg: StreamMessage) -> None:
        seen.append(msg.delivery_count)
        if msg.delivery_count == 1:
            raise Retry("later", delay=delay)

    cfg = config(stream_name, backoff=Backoff(initial=timedelta(seconds=0.1)))
    stats = Consumer(streams_client, cfg).run(handler, burst=True, handle_signals=False)
    assert seen == [1, 2], "the retry came, on the configured backoff (immediate)"
    assert stats.errors == {"ValueError": 1}
    assert (stats.acked, stats.dead_lettered) == (1, 0)
    assert streams_client.redis.xpending(stream_name, "g")["pending"] == 0
    assert streams_client.read_dlq(stream_name) == []


@pytest.mark.parametrize("retention", [timedelta(days=365 * 60), timedelta(days=999_999)])
def test_a_retention_longer_than_the_epoch_dead_letters_and_trims_nothing(
    streams_client: RedisStreamsClient, stream_name: str, retention: timedelta
) -> None:
    # 60 years gave a negative MINID (an invalid id: every dead letter failed); 999,999 days
    # an OverflowError. Both mean "keep everything".
    r = streams_client.redis
    cfg = config(stream_name, dlq_retention=retention)
    r.xadd(
        streams_client.dlq_stream(stream_name),
        {"dlq_error": b"old", "dlq_error_type": b"Old"},
        id="1-0",
    )
    add(streams_client, stream_name, 2)

    def reject(msg: StreamMessage) -> None:
        raise Reject("no")

    stats = Consumer(streams_client, cfg).run(reject, burst=True, handle_signals=False)
    assert stats.dead_lettered == 2
    assert [m.fields["dlq_error"] for m in streams_client.read_dlq(stream_name)] == [
        b"old", b"no", b"no"
    ]  # fmt: skip


def test_idle_consumers_holding_nothing_are_deleted_and_holders_are_kept(
    streams_client: RedisStreamsClient, redis_client: redis.Redis, stream_name: str
) -> None:
    streams_client.ensure_group(stream_name, "g")
    streams_client.add_many(stream_name, [StreamEvent(event_type="push") for _ in range(2)])
    base: dict[str, Any] = {"stream": stream_name, "group": "g", "batch_size": 1}
    holder = Consumer(streams_client, ConsumerConfig(consumer="holder", **base))
    assert len(holder.read_messages(block=0.1)) == 1  # holds it, idle from now on
    redis_client.xgroup_createconsumer(stream_name, "g", "empty")
    time.sleep(0.3)  # both idle for 3x the limit below: a wide margin, not a tight bound
    limit = timedelta(seconds=0.1)
    runner = Consumer(
        streams_client, ConsumerConfig(consumer="runner", delete_idle_consumers=limit, **base)
    )
    runner.run(lambda m: None, burst=True, handle_signals=False)
    rows = redis_client.xinfo_consumers(stream_name, "g")
    consumers = {c["name"].decode(): c["pending"] for c in rows}
    assert consumers == {"holder": 1, "runner": 0}  # "empty" deleted, the holder kept
    with pytest.raises(ConfigError, match="delete_idle_consumers: must be greater than 0"):
        ConsumerConfig(delete_idle_consumers=timedelta(0), **base)


def test_a_same_name_restart_takes_back_its_entries_once_not_those_in_hand(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    ids = streams_client.add_many(stream_name, [StreamEvent(event_type="x") for _ in range(6)])
    streams_client.ensure_group(stream_name, "g")
    base: dict[str, Any] = {"stream": stream_name, "group": "g", "consumer": "w", "batch_size": 2}
    gone = Consumer(streams_client, ConsumerConfig(**base))
    assert [m.id for m in gone.read_messages(block=0.1) + gone.read_messages(block=0.1)] == ids[:4]
    time.sleep(0.01)  # the old deliveries are idle before the new object starts (10x margin)
    again = Consumer(streams_client, ConsumerConfig(**base))  # claim_min_idle is 60 s
    batches = [again.read_messages(block=0.1) for _ in range(3)]
    assert [[(m.id, m.delivery_count) for m in b] for b in batches] == [
        [(ids[0], 2), (ids[1], 2)],
        [(ids[2], 2), (ids[3], 2)],  # not ids[0:2] again: they are in hand
        [(ids[4], 1), (ids[5], 1)],
    ]


def test_a_wrong_password_stops_the_worker_instead_of_waiting_for_ever(redis_url: str) -> None:
    # redis-py's AuthenticationError is a ConnectionError: it was waited out like an outage.
    parts = urlsplit(redis_url)
    url = f"redis://nobody:wrong@{parts.hostname}:{parts.port}/0"
    client = RedisStreamsClient(connect(url))
    cfg = ConsumerConfig(stream="s", group="g", consumer="c")
    started = time.monotonic()
    with pytest.raises(redis.AuthenticationError):
        Consumer(client, cfg).run(lambda m: None, burst=True, handle_signals=False)
    assert time.monotonic() - started < 30  # at once; 30 s is a wide margin for a slow CI


def test_run_stats_count_handler_calls_apart_from_entries_no_handler_saw(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    r = streams_client.redis
    streams_client.add_many(stream_name, [StreamEvent(event_type="push", payload={})] * 3)
    r.xadd(stream_name, {"event_type": b"push", "payload": b"{not json"})  # undecodable
    marker = ReplayMarker(
        replay_id="00000000-0000-4000-8000-000000000000",
        source_id="1-0",
        count=1,
        replayed_at=datetime.now(UTC),
        group="another-group",
    )
    event = encode_event(StreamEvent(event_type="push", payload={}))
    r.xadd(stream_name, {**event, **marker.to_fields()})  # replayed for another group
    calls: list[str] = []

    def fail_first(msg: StreamMessage) -> None:
        calls.append(msg.id)
        if len(calls) == 1:
            raise Reject("no")

    stats = Consumer(streams_client, config(stream_name)).run(
        fail_first, burst=True, handle_signals=False
    )
    assert stats.handled == len(calls) == 3
    assert (stats.failed, stats.skipped, stats.dead_lettered) == (1, 1, 2)
    assert stats.acked == 2  # the skipped one is acked too, but counted as skipped
    assert r.xpending(stream_name, "g")["pending"] == 0
