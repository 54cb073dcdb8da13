"""Dead letters and replays lose nothing when a step fails: entries too large for Lua, a target
that cannot take another id, a server out of memory (reliability issue, defects 1, 2, 6)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
import redis

from streamlab.client import RedisStreamsClient
from streamlab.consumer import Consumer, ConsumerConfig
from streamlab.embedded import EmbeddedServer
from streamlab.errors import Reject
from streamlab.events import StreamEvent, StreamMessage
from streamlab.replay import replay_dlq

MAX_ID = "18446744073709551615-18446744073709551615"
WIDE = 5000  # fields: past Lua's unpack limit (~4,000 field pairs)


def config(stream: str, **kw: object) -> ConsumerConfig:
    return ConsumerConfig(stream=stream, group="g", claim_min_idle=timedelta(seconds=5), **kw)


def reject_all(msg: StreamMessage) -> None:
    raise Reject("no")


def in_background(
    consumer: Consumer, handler: Callable[[StreamMessage], object], stop: threading.Event
) -> threading.Thread:
    """Run ``consumer`` in a thread until ``stop`` is set."""
    thread = threading.Thread(
        target=consumer.run, args=(handler,), kwargs={"handle_signals": False, "stop_event": stop}
    )
    thread.start()
    return thread


def wide_entry(n: int = WIDE) -> dict[bytes, bytes]:
    fields = {f"f{i}".encode(): f"v{i}".encode() for i in range(n)}
    fields[b"event_type"] = b"push"
    fields[b"bin\xff"] = b"\x00\xfe"
    return fields


def dead_letter_one(client: RedisStreamsClient, stream: str, fields: dict[bytes, bytes]) -> str:
    entry_id = client.redis.xadd(stream, fields).decode()
    Consumer(client, config(stream)).run(reject_all, burst=True, handle_signals=False)
    return entry_id


def test_an_entry_of_5000_fields_reaches_the_dlq_byte_for_byte(
    streams_client: RedisStreamsClient, redis_client: redis.Redis, stream_name: str
) -> None:
    fields = wide_entry()
    entry_id = dead_letter_one(streams_client, stream_name, fields)
    [(_, dead)] = redis_client.xrange(f"{stream_name}_dlq")
    assert {k: v for k, v in dead.items() if not k.startswith(b"dlq_")} == fields
    assert dead[b"dlq_source_id"] == entry_id.encode()
    assert redis_client.xpending(stream_name, "g")["pending"] == 0


def test_a_wide_dlq_entry_replays_whole_and_leaves_the_dlq(
    streams_client: RedisStreamsClient, redis_client: redis.Redis, stream_name: str
) -> None:
    fields = wide_entry()
    dead_letter_one(streams_client, stream_name, fields)
    dry = replay_dlq(streams_client, stream_name, dry_run=True)
    report = replay_dlq(streams_client, stream_name)
    assert (len(dry.replayed), len(report.replayed), report.failed) == (1, 1, {})
    [new_id] = report.mapping.values()
    [(_, replayed)] = redis_client.xrange(stream_name, new_id, new_id)
    assert all(replayed[k] == v for k, v in fields.items())
    assert replayed[b"streamlab:replay_of"]
    assert replayed[b"retry_count"] == b"0"
    assert redis_client.xlen(f"{stream_name}_dlq") == 0
    # A second run finds it done: never injected twice.
    again = replay_dlq(streams_client, stream_name, replay_id=report.replay_id)
    assert (again.replayed, list(again.skipped)) == ([], [])


@pytest.mark.parametrize("wide", [False, True], ids=["lua", "transaction"])
def test_a_target_that_cannot_take_an_id_leaves_the_entry_in_the_dlq(
    streams_client: RedisStreamsClient, redis_client: redis.Redis, stream_name: str, wide: bool
) -> None:
    fields = wide_entry() if wide else {b"event_type": b"push"}
    dead_letter_one(streams_client, stream_name, fields)
    target = f"{stream_name}-full"
    redis_client.xadd(target, {"x": "1"})
    redis_client.execute_command("XSETID", target, MAX_ID)
    dry = replay_dlq(streams_client, stream_name, target=target, dry_run=True)
    real = replay_dlq(streams_client, stream_name, target=target)
    for report in (dry, real):
        assert report.replayed == []
        [reason] = report.failed.values()
        assert "last possible ID" in reason
    assert redis_client.xlen(f"{stream_name}_dlq") == 1
    assert redis_client.xlen(target) == 1
    # Once the cause is gone, the same selection replays.
    assert len(replay_dlq(streams_client, stream_name).replayed) == 1


@pytest.fixture
def small_server() -> Iterator[EmbeddedServer]:
    with EmbeddedServer(args=["--maxmemory-policy", "noeviction"]) as server:
        yield server


def fill_up(r: redis.Redis) -> None:
    """Put the server over maxmemory: every write that may grow memory is refused."""
    r.config_set("maxmemory", "1")


@pytest.mark.parametrize("wide", [False, True], ids=["lua", "transaction"])
def test_replay_on_a_full_server_fails_and_keeps_the_entry(
    small_server: EmbeddedServer, wide: bool
) -> None:
    r = small_server.client()
    client = RedisStreamsClient(r)
    dead_letter_one(client, "s", wide_entry() if wide else {b"event_type": b"push"})
    fill_up(r)
    report = replay_dlq(client, "s")
    assert report.replayed == []
    [reason] = report.failed.values()
    assert "OutOfMemoryError" in reason
    assert (r.xlen("s_dlq"), r.xlen("s")) == (1, 1)
    r.config_set("maxmemory", "0")
    assert len(replay_dlq(client, "s").replayed) == 1
    assert (r.xlen("s_dlq"), r.xlen("s")) == (0, 2)


@pytest.mark.parametrize("wide", [False, True], ids=["lua", "transaction"])
def test_dead_lettering_on_a_full_server_waits_and_loses_nothing(
    small_server: EmbeddedServer, wide: bool
) -> None:
    r = small_server.client()
    client = RedisStreamsClient(r)
    client.ensure_group("s", "g")
    entry_id = r.xadd("s", wide_entry() if wide else {b"event_type": b"push"}).decode()
    fill_up(r)
    stop = threading.Event()
    seen: list[str] = []

    def handler(msg: StreamMessage) -> None:
        seen.append(msg.id)
        raise Reject("no")

    # ensure_group must not fail on a full server when the group exists.
    consumer = Consumer(client, config("s"))
    thread = in_background(consumer, handler, stop)
    try:
        deadline = threading.Event()
        assert not deadline.wait(1.5)  # the worker is refused for 1.5 s ...
        assert thread.is_alive(), "the worker died on OutOfMemoryError"
        assert r.xpending("s", "g")["pending"] == 1
        assert r.xlen("s_dlq") == 0
        r.config_set("maxmemory", "0")  # ... then the server has room again
        for _ in range(100):
            if r.xlen("s_dlq"):
                break
            deadline.wait(0.1)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert seen == [entry_id]
    [(_, dead)] = r.xrange("s_dlq")
    assert dead[b"dlq_source_id"] == entry_id.encode()
    assert r.xpending("s", "g")["pending"] == 0
    assert consumer.stats.dead_lettered == 1


def test_a_worker_started_while_redis_is_down_waits_for_it() -> None:
    server = EmbeddedServer()
    client = RedisStreamsClient(redis.Redis(host="127.0.0.1", port=server.port))
    stop = threading.Event()
    seen: list[str] = []

    def handler(msg: StreamMessage) -> None:
        seen.append(msg.id)
        stop.set()

    consumer = Consumer(client, config("s"))
    thread = in_background(consumer, handler, stop)
    try:
        assert not stop.wait(1.0)
        assert thread.is_alive(), "the worker died because Redis was down at start"
        with server:
            entry_id = client.add_to_stream("s", StreamEvent(event_type="push"))
            thread.join(timeout=20)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert seen == [entry_id]


@pytest.mark.parametrize("how", ["XGROUP DESTROY", "DEL"])
def test_a_group_deleted_under_a_running_consumer_is_created_again(
    streams_client: RedisStreamsClient, redis_client: redis.Redis, stream_name: str, how: str
) -> None:
    stop = threading.Event()
    seen: list[str] = []
    consumer = Consumer(streams_client, config(stream_name, block_duration=timedelta(seconds=0.2)))
    thread = in_background(consumer, lambda m: seen.append(m.id), stop)
    try:
        first = streams_client.add_to_stream(stream_name, StreamEvent(event_type="push"))
        for _ in range(100):
            if seen:
                break
            stop.wait(0.1)
        if how == "DEL":
            redis_client.delete(stream_name)
        else:
            redis_client.xgroup_destroy(stream_name, "g")
        stop.wait(0.5)
        assert thread.is_alive(), f"the worker died after {how}"
        # The group is created again at "0": the next event is handled.
        second = streams_client.add_to_stream(stream_name, StreamEvent(event_type="push"))
        for _ in range(100):
            if second in seen:
                break
            stop.wait(0.1)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert first in seen
    assert second in seen


def test_without_create_group_a_missing_group_stops_with_one_clear_error(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    from streamlab.errors import GroupNotFoundError

    streams_client.add_to_stream(stream_name, StreamEvent(event_type="push"))
    consumer = Consumer(streams_client, config(stream_name, create_group=False))
    with pytest.raises(GroupNotFoundError, match="consumer group 'g' does not exist"):
        consumer.run(reject_all, burst=True, handle_signals=False)


def test_ack_message_of_an_id_not_pending_acks_nothing(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    consumer = Consumer(streams_client, config(stream_name))
    streams_client.ensure_group(stream_name, "g")
    streams_client.add_to_stream(stream_name, StreamEvent(event_type="push"))
    [msg] = consumer.read_messages(block=1)
    assert consumer.ack_message(msg.id) == 1
    assert consumer.ack_message(msg.id) == 0
    assert consumer.ack_message("1-1") == 0
    assert consumer.stats.acked == 1
