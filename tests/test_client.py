"""The streams client against a real server: groups and their errors, long blocking reads,
producing and decoding."""

from __future__ import annotations

import inspect
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from clientlike import CALLS

import streamlab.consumer as consumer_module
import streamlab.metrics as metrics_module
from streamlab.client import RedisStreamsClient, StreamsClient, connect
from streamlab.consumer import Consumer, ConsumerConfig
from streamlab.embedded import EmbeddedServer
from streamlab.errors import (
    ArgumentError,
    EncodeError,
    GroupNotFoundError,
    PartialWriteError,
    StreamNotFoundError,
    WrongTypeError,
)
from streamlab.events import (
    AuthContext,
    StreamEvent,
    StreamMessage,
    decode_entries,
    decode_event,
    decode_message,
    encode_event,
)
from streamlab.metrics import Metrics
from streamlab.samples import platform_entries, sample_events

# -- groups: BUSYGROUP, NOGROUP, WRONGTYPE -----------------------------------------------------


def test_ensure_group_creates_once_then_tolerates_busygroup(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    assert streams_client.ensure_group(stream_name, "g") is True  # creates the stream too
    assert streams_client.ensure_group(stream_name, "g") is False
    info = streams_client.get_stream_info(stream_name)
    assert (info.length, [g.name for g in info.groups]) == (0, ["g"])


def test_missing_group_raises_group_not_found(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    streams_client.add_to_stream(stream_name, StreamEvent(event_type="push"))
    with pytest.raises(GroupNotFoundError, match="'nope'"):
        streams_client.read_from_stream(stream_name, "nope", "c", 1)
    assert streams_client.ack_message(stream_name, "nope", "1-0") == 0  # XACK: no error
    for stream in (stream_name, f"{stream_name}-missing"):
        cfg = ConsumerConfig(stream=stream, group="nope", consumer="c", create_group=False)
        with pytest.raises(GroupNotFoundError):
            Consumer(streams_client, cfg).run(lambda m: None, burst=True, handle_signals=False)
    # Nothing was created on the way.
    assert streams_client.redis.xinfo_groups(stream_name) == []
    assert not streams_client.redis.exists(f"{stream_name}-missing")


def test_key_of_another_type_raises_wrong_type(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    streams_client.redis.set(stream_name, b"not a stream")
    with pytest.raises(WrongTypeError, match="not a stream"):
        streams_client.read_from_stream(stream_name, "g", "c", 1)
    with pytest.raises(WrongTypeError):
        streams_client.ensure_group(stream_name, "g")
    with pytest.raises(WrongTypeError):
        streams_client.add_to_stream(stream_name, StreamEvent(event_type="push"))
    assert streams_client.redis.get(stream_name) == b"not a stream"


# -- blocking reads longer than redis-py's default socket timeout ------------------------------


def test_blocking_reads_longer_than_the_socket_timeout_return_normally(
    redis_url: str, stream_name: str
) -> None:
    """redis-py's default client has socket_timeout=5; a 6.5 s block must still just return."""

    def default_client() -> RedisStreamsClient:
        r = redis.Redis.from_url(redis_url)
        conn = r.connection_pool.get_connection()
        assert conn.socket_timeout == 5
        r.connection_pool.release(conn)
        return RedisStreamsClient(r)

    empty, late, consumer = (f"{stream_name}-{k}" for k in ("empty", "late", "consumer"))
    setup = default_client()
    for s in (empty, late, consumer):
        setup.ensure_group(s, "g")

    def read_empty() -> tuple[float, list[StreamMessage]]:
        started = time.monotonic()
        got = default_client().read_from_stream(empty, "g", "c", 10, block=6.5)
        return time.monotonic() - started, got

    def read_late() -> tuple[float, list[StreamMessage]]:
        timer = threading.Timer(5.5, setup.add_to_stream, (late, StreamEvent(event_type="late")))
        started = time.monotonic()
        timer.start()
        try:
            got = default_client().read_from_stream(late, "g", "c", 10, block=9)
        finally:
            timer.join()
        return time.monotonic() - started, got

    def read_consumer() -> tuple[float, list[StreamMessage]]:
        cfg = ConsumerConfig(
            stream=consumer, group="g", consumer="c", block_duration=timedelta(seconds=6)
        )
        started = time.monotonic()
        got = Consumer(default_client(), cfg).read_messages()
        return time.monotonic() - started, got

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(f) for f in (read_empty, read_late, read_consumer)]
        (t_empty, got_empty), (t_late, got_late), (t_cons, got_cons) = (
            f.result(timeout=30) for f in futures
        )
    assert got_empty == []
    assert t_empty >= 6.5
    assert [m.event.event_type for m in got_late if m.event] == ["late"]
    assert 5.5 <= t_late < 9
    assert got_cons == []
    assert t_cons >= 6


# -- producing and decoding --------------------------------------------------------------------


def test_add_many_returns_ids_in_order_and_round_trips(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    events = list(sample_events(25, seed=3))
    ids = streams_client.add_many(stream_name, events, batch_size=7)
    assert len(ids) == 25
    assert [m.id for m in streams_client.range(stream_name)] == ids
    assert sorted(ids, key=lambda i: tuple(map(int, i.split("-")))) == ids
    back = [m.event for m in streams_client.range(stream_name)]
    assert back == events
    one = StreamEvent(
        event_type="push",
        payload={"nested": [1, {"a": None}], "text": "é ✓"},
        tenant_id="t1",
        auth_context=AuthContext(tenant_id="t1", permissions={"contents": "read"}),
    )
    new_id = streams_client.add_to_stream(stream_name, one, maxlen=1000)
    [msg] = streams_client.range(stream_name, new_id, new_id)
    assert msg.event == one
    assert decode_event(encode_event(one)) == one


def test_maxlen_caps_the_stream_approximately_and_keeps_the_newest(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    """A cap of 1000 trims once the stream is 100 over, called every 50 single adds; a
    group that keeps up does not hold it back. An entry too big for Lua takes the XADD +
    trim path."""
    r = streams_client.redis
    streams_client.ensure_group(stream_name, "g", "0")
    ids: list[str] = []
    for n in range(1500):
        ids.append(streams_client.add_to_stream(stream_name, {"n": str(n)}, maxlen=1000))
        if n % 100 == 99:
            got = r.xreadgroup("g", "c", {stream_name: ">"}, count=1000)
            r.xack(stream_name, "g", *[entry_id for entry_id, _ in got[0][1]])
    assert 1000 <= r.xlen(stream_name) <= 1000 + 100 + 50
    assert r.xrevrange(stream_name, count=1)[0][0].decode() == ids[-1]
    big = {f"f{i}": "v" for i in range(3600)}
    for _ in range(100):
        ids.append(streams_client.add_to_stream(stream_name, big, maxlen=1000))
    assert 1000 <= r.xlen(stream_name) <= 1000 + 100 + 50
    assert r.xrevrange(stream_name, count=1)[0][0].decode() == ids[-1]


def test_add_many_with_one_unencodable_event_writes_nothing_and_names_it(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    # The bad event comes after a full pipeline batch, which used to be written already.
    events = list(sample_events(1500, seed=4))
    events[1200] = events[1200].model_copy(update={"payload": {"total": float("nan")}})
    with pytest.raises(EncodeError) as info:
        streams_client.add_many(stream_name, events, batch_size=1000)
    assert str(info.value) == (
        f"event 1200 (id {events[1200].id!r}): payload.total: "
        "nan is not a JSON number; send null or a string instead"
    )
    assert (info.value.index, info.value.event_id) == (1200, events[1200].id)
    assert streams_client.redis.exists(stream_name) == 0

    raw_events: list[dict[str, object]] = [{"n": str(i)} for i in range(5)]
    raw_events[3] = {"event_id": "raw-3", "n": None}
    with pytest.raises(EncodeError, match=r"^event 3 \(id 'raw-3'\): n: values must be str"):
        streams_client.add_many(stream_name, iter(raw_events))
    with pytest.raises(EncodeError, match=r"^event 1: an entry needs at least one field"):
        streams_client.add_many(stream_name, [{"n": "0"}, {}])
    with pytest.raises(EncodeError, match=r"^event 0: x: inf is not a number"):
        streams_client.add_many(stream_name, [{"x": float("inf")}])
    assert streams_client.redis.exists(stream_name) == 0
    # One event alone: the same error, without an index, and nothing written.
    with pytest.raises(EncodeError, match=rf"^event {events[1200].id!r}: payload\.total: nan"):
        streams_client.add_to_stream(stream_name, events[1200])
    assert streams_client.redis.exists(stream_name) == 0
    assert len(streams_client.add_many(stream_name, events[:1200], batch_size=1000)) == 1200


@pytest.mark.parametrize("maxlen", [None, 100_000], ids=["overlapped", "capped"])
def test_add_many_out_of_memory_midway_says_which_events_were_written(
    private_server: EmbeddedServer, maxlen: int | None
) -> None:
    """When the server runs out of memory midway, `PartialWriteError` names the events
    written (not always a prefix: the server's memory use moves between commands, so a
    refused XADD may be followed by accepted ones), nothing is sent after the batch in flight,
    the metrics count exactly the events written, the connection is still in step, and
    sending the unwritten ones again gives every event once. Overlapped batches (no cap) and
    one batch per round trip (a cap, with its trim script) alike."""
    r = private_server.client()
    counted: list[int] = []

    class Count(Metrics):
        def produced(self, stream: str, n: int) -> None:
            counted.append(n)

    client = RedisStreamsClient(r, metrics=Count())
    events = list(sample_events(3000, seed=6))
    client.add_many("s", events[:10])  # the stream exists; its memory is counted below
    used = r.info("memory")["used_memory"]
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", used + 400_000)  # room for several batches of 100, not all
    r.config_resetstat()
    rest = events[10:]
    with pytest.raises(PartialWriteError) as info:
        client.add_many("s", rest, batch_size=100, maxlen=maxlen)
    r.config_set("maxmemory", 0)
    err = info.value
    assert isinstance(err.__cause__, redis.OutOfMemoryError)
    assert len(err.ids) == len(rest)
    written = [i for i, entry_id in enumerate(err.ids) if entry_id is not None]
    assert 0 < len(written) < len(rest)
    assert err.unwritten == sorted(set(range(len(rest))) - set(written))
    stored = client.range("s")[10:]
    assert [m.id for m in stored] == [err.ids[i] for i in written]
    assert [m.event for m in stored] == [rest[i] for i in written]
    xadd = r.info("commandstats")["cmdstat_xadd"]
    attempts = xadd["calls"] + xadd.get("rejected_calls", 0)
    first_refused_batch = err.unwritten[0] // 100
    assert attempts <= (first_refused_batch + 2) * 100  # that batch and the one in flight
    assert all(i // 100 <= first_refused_batch + 1 for i in written)
    assert sum(counted[1:]) == len(written)
    # Every reply was read: the pooled connection's next commands get their own replies.
    assert r.ping() is True
    client.add_many("s", [rest[i] for i in err.unwritten], maxlen=maxlen)
    everything = [m.event for m in client.range("s")]
    assert len(everything) == len(events)
    assert sorted(e.id for e in everything if e) == sorted(e.id for e in events)


def test_add_many_refused_before_anything_is_written_raises_the_servers_error(
    private_server: EmbeddedServer,
) -> None:
    r = private_server.client()
    client = RedisStreamsClient(r)
    client.add_many("s", sample_events(1))
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", 1)
    try:
        with pytest.raises(redis.OutOfMemoryError):
            client.add_many("s", sample_events(500), batch_size=100)
    finally:
        r.config_set("maxmemory", 0)
    assert r.xlen("s") == 1


def test_text_utf8_cannot_carry_is_refused_before_anything_is_written(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    # redis-py raised UnicodeEncodeError only while sending, after earlier batches were sent.
    events = [StreamEvent(event_type="push") for _ in range(1500)]
    events[1100] = StreamEvent(id="bad", event_type="push\ud800")
    with pytest.raises(EncodeError, match=r"^event 1100 \(id 'bad'\): event_type: holds a lone"):
        streams_client.add_many(stream_name, events)
    with pytest.raises(EncodeError, match=r"^event 'x': payload\.k\[0\]: holds a lone surrogate"):
        streams_client.add_to_stream(
            stream_name, StreamEvent(id="x", event_type="t", payload={"k": ["\udc80"]})
        )
    with pytest.raises(EncodeError, match=r"^event 0: note: holds a lone surrogate"):
        streams_client.add_many(stream_name, [{"note": "\ud83d"}])
    assert streams_client.redis.exists(stream_name) == 0


def test_a_decoded_entry_with_a_binary_field_name_can_be_written_again(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    first = streams_client.redis.xadd(stream_name, {b"event_type": b"t", b"\xff\x00name": b"v"})
    [message] = streams_client.range(stream_name, first, first)
    assert message.event is not None
    again = streams_client.add_to_stream(stream_name, message.event)
    [raw] = streams_client.redis.xrange(stream_name, again, again)
    assert raw[1][b"\xff\x00name"] == b"v", "the name is written back byte for byte"


def test_read_entries_gives_raw_entries_that_read_from_stream_decodes(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    events = list(sample_events(4, seed=5))
    ids = streams_client.add_many(stream_name, events)
    streams_client.ensure_group(stream_name, "g")
    raw = streams_client.read_entries(stream_name, "g", "c", 3)
    assert [entry_id for entry_id, _ in raw] == [i.encode() for i in ids[:3]]
    # As Redis sends them: a flat name, value, ... list of bytes, in the order written.
    assert all(isinstance(v, bytes) for _, fields in raw for v in fields)
    assert raw[0][1][0::2] == [name.encode() for name in encode_event(events[0])]
    decoded = [decode_message(stream_name, entry_id, fields).event for entry_id, fields in raw]
    assert decoded == events[:3]
    [msg] = streams_client.read_from_stream(stream_name, "g", "c", 3)  # the same cursor
    assert (msg.id, msg.event, msg.delivery_count) == (ids[3], events[3], 1)


@pytest.mark.parametrize("protocol", [2, 3])
def test_read_entries_has_one_shape_in_resp2_and_resp3(
    streams_client: RedisStreamsClient, stream_name: str, protocol: int
) -> None:
    """The raw reply differs by protocol (RESP2 a list, RESP3 a map); the entries do not,
    and a single entry is not mistaken for a list of them."""
    kwargs = streams_client.redis.connection_pool.connection_kwargs
    where = {k: kwargs[k] for k in ("host", "port", "db", "username", "password") if k in kwargs}
    r = redis.Redis(**where, protocol=protocol)
    client = RedisStreamsClient(r)
    [event] = sample_events(1, seed=9)
    [entry_id] = client.add_many(stream_name, [event])
    client.ensure_group(stream_name, "g")
    [(got_id, fields)] = client.read_entries(stream_name, "g", "c", 10)
    assert got_id == entry_id.encode()
    assert dict(zip(fields[0::2], fields[1::2], strict=True)) == r.xrange(stream_name)[0][1]
    assert client.read_entries(stream_name, "g", "c", 10) == []
    r.close()


def test_platform_entries_decode_with_their_own_field_names(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    entries = list(platform_entries(5, seed=1))
    ids = streams_client.add_many(stream_name, entries)
    messages = streams_client.range(stream_name)
    assert [m.id for m in messages] == ids
    for raw, msg in zip(entries, messages, strict=True):
        event = msg.event
        assert event is not None, msg.decode_error
        assert event.id == raw["event_id"]
        assert event.repository == raw["repo_name"]
        assert event.auth_context is not None
        assert event.tenant_id == event.auth_context.tenant_id != ""
        assert event.extra == {"sender_name": raw["sender_name"], "metadata": raw["metadata"]}
        # Re-encoding keeps the unknown fields verbatim.
        assert encode_event(event)["metadata"] == raw["metadata"]


def test_stream_info_of_a_missing_stream_raises(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    with pytest.raises(StreamNotFoundError, match="does not exist"):
        streams_client.get_stream_info(stream_name)
    ids = streams_client.add_many(stream_name, sample_events(3))
    streams_client.ensure_group(stream_name, "g", start_id="0")
    info = streams_client.get_stream_info(stream_name)
    assert (info.length, info.first_id, info.last_id) == (3, ids[0], ids[-1])
    [group] = info.groups
    assert (group.name, group.pending, group.lag) == ("g", 0, 3)


def _one_dead_letter(client: RedisStreamsClient, stream: str) -> None:
    """``stream`` with group ``g`` and one event in its DLQ."""
    client.add_to_stream(stream, StreamEvent(event_type="push", payload={"n": 1}))

    def fail(msg: StreamMessage) -> None:
        raise ValueError("boom")

    config = ConsumerConfig(stream=stream, group="g", max_retries=0)
    Consumer(client, config).run(fail, burst=True, handle_signals=False)
    assert client.redis.xlen(client.dlq_stream(stream)) == 1


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("kind", ["RedisStreamsClient", "redis.Redis"])
def test_every_function_taking_a_client_takes_both_kinds(
    redis_client: redis.Redis, stream_name: str, tmp_path: Path, call: str, kind: str
) -> None:
    _one_dead_letter(RedisStreamsClient(redis_client), stream_name)
    client = RedisStreamsClient(redis_client) if kind == "RedisStreamsClient" else redis_client
    CALLS[call](client, stream_name, tmp_path)
    if call == "replay_outcome":  # the replay before it ran for real, on this kind
        assert redis_client.xlen(f"{stream_name}_dlq") == 0


@pytest.mark.parametrize("call", sorted(CALLS))
def test_any_other_client_is_a_type_error_naming_it(
    redis_url: str, stream_name: str, tmp_path: Path, call: str
) -> None:
    with pytest.raises(TypeError, match=r"not builtins\.str"):
        CALLS[call](redis_url, stream_name, tmp_path)
    pipe = redis.Redis.from_url(redis_url).pipeline()
    with pytest.raises(TypeError, match=r"not redis\.client\.Pipeline"):
        CALLS[call](pipe, stream_name, tmp_path)


def test_the_streams_client_protocol_is_what_redis_streams_client_offers() -> None:
    members = [n for n in vars(StreamsClient) if not n.startswith("_")]
    assert {"read_entries", "ack_many", "dlq_stream", "range", "read_dlq"} <= set(members)
    for name in members:
        want = inspect.signature(getattr(StreamsClient, name))
        assert inspect.signature(getattr(RedisStreamsClient, name)) == want, name
    client = RedisStreamsClient(redis.Redis())
    assert isinstance(client, StreamsClient)
    # The attributes too (mypy checks the types: see _is_a_streams_client in client.py).
    attributes = set(StreamsClient.__annotations__)
    assert attributes == {"redis", "scripts", "metrics"}
    assert all(hasattr(client, name) for name in attributes)


def test_the_streams_client_protocol_holds_all_a_consumer_uses_of_its_client() -> None:
    """A client standing in for RedisStreamsClient (asyncio, say) has the protocol as its
    exact target: every member the consumer and the metrics' lag reading use is in it."""
    used = set(re.findall(r"self\.client\.(\w+)", inspect.getsource(consumer_module)))
    used |= set(re.findall(r"client\.(\w+)\(stream\)", inspect.getsource(metrics_module)))
    protocol = {n for n in vars(StreamsClient) if not n.startswith("_")}
    protocol |= set(StreamsClient.__annotations__)
    assert {"redis", "scripts", "read_entries", "get_stream_info"} <= used
    assert used <= protocol, used - protocol


@pytest.mark.parametrize("value", ["redis://127.0.0.1:1", {}, None, 6379])
def test_a_streams_client_of_anything_but_a_redis_client_is_a_type_error_naming_it(
    redis_url: str, value: object
) -> None:
    with pytest.raises(TypeError, match=rf"not builtins\.{type(value).__name__}"):
        RedisStreamsClient(value)  # type: ignore[arg-type]
    pipe = redis.Redis.from_url(redis_url).pipeline()
    with pytest.raises(TypeError, match=r"not redis\.client\.Pipeline"):
        RedisStreamsClient(pipe)
    with pytest.raises(TypeError, match="metrics must be"):
        RedisStreamsClient(redis.Redis.from_url(redis_url), metrics=object())  # type: ignore[arg-type]


def test_client_options_and_urls_are_checked_when_the_client_is_built(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    with pytest.raises(ArgumentError, match=r"stream_maxlen\['s'\]: must be >= 1, got 0"):
        RedisStreamsClient(r, stream_maxlen={"s": 0})
    with pytest.raises(ArgumentError, match="stream_maxlen: expected a mapping"):
        RedisStreamsClient(r, stream_maxlen=10)  # type: ignore[arg-type]
    # The one rule and wording of every stream name (`_args.name`), for a DLQ and its stream.
    with pytest.raises(
        ArgumentError, match=r"^dlq_names\['s'\]: expected a non-empty name \(a str\), got None$"
    ):
        RedisStreamsClient(r, dlq_names={"s": None})  # type: ignore[dict-item]
    with pytest.raises(ArgumentError, match=r"^dlq_names\['s'\]: expected a non-empty name"):
        RedisStreamsClient(r, dlq_names={"s": ""})
    with pytest.raises(
        ArgumentError, match=r"^dlq_names: expected a non-empty name \(a str\), got 5$"
    ):
        RedisStreamsClient(r, dlq_names={5: "s_dead"})  # type: ignore[dict-item]
    with pytest.raises(ArgumentError, match="url: Redis URL must specify"):
        RedisStreamsClient.from_url("localhost:6379")
    with pytest.raises(TypeError, match="url must be a str"):
        connect(None)  # type: ignore[arg-type]


def test_bad_stream_ids_are_argument_errors_naming_the_argument(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    [entry] = streams_client.add_many(stream_name, [StreamEvent(event_type="push")])
    streams_client.ensure_group(stream_name, "g")
    streams_client.read_from_stream(stream_name, "g", "c", 1)
    with pytest.raises(ArgumentError, match="entry_id: 'zzz' is not a stream id"):
        streams_client.message(stream_name, "zzz")
    with pytest.raises(ArgumentError, match="message_id: 'zzz' is not a stream id"):
        streams_client.ack_message(stream_name, "g", "zzz")
    # One bad id among good ones: named by its index, and nothing acked.
    with pytest.raises(ArgumentError, match=r"message_ids\[1\]: 'zzz'"):
        streams_client.ack_many(stream_name, "g", [entry, "zzz"])
    with pytest.raises(ArgumentError, match="message_ids: expected a sequence"):
        streams_client.ack_many(stream_name, "g", entry)
    assert streams_client.redis.xpending(stream_name, "g")["pending"] == 1
    with pytest.raises(ArgumentError, match="start_id: 'abc' is not a group start id"):
        streams_client.ensure_group(stream_name, "g2", "abc")
    with pytest.raises(ArgumentError, match="delivery_count: must be >= 1"):
        streams_client.message(stream_name, entry, 0)
    assert [g.name for g in streams_client.get_stream_info(stream_name).groups] == ["g"]
    # "$", "0", a stream id and bare milliseconds are start ids, as in ConsumerConfig.
    for group, start in [("new", "$"), ("all", "0"), ("from", entry), ("ms", entry.split("-")[0])]:
        assert streams_client.ensure_group(stream_name, group, start) is True
    # An id not pending (or not there) acks nothing; one not in the stream is no message.
    assert streams_client.ack_many(stream_name, "g", [entry, "1-1"]) == 1
    assert streams_client.ack_message(stream_name, "g", entry) == 0
    assert streams_client.message(stream_name, "1-1") is None
    assert streams_client.message(stream_name, entry.encode()) is not None  # as redis-py gives


def test_bad_limits_counts_and_names_are_argument_errors_and_write_nothing(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    c, push = streams_client, StreamEvent(event_type="push")
    c.ensure_group(stream_name, "g")
    for value, says in [(-1, "must be >= 0, got -1"), (True, "expected an int >= 0")]:
        with pytest.raises(ArgumentError, match=f"limit: {says}"):
            c.range(stream_name, limit=value)  # type: ignore[arg-type]
        with pytest.raises(ArgumentError, match=f"limit: {says}"):
            c.read_dlq(stream_name, limit=value)  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="batch_size: must be >= 1, got 0"):
        c.add_many(stream_name, [push], batch_size=0)
    for value in (0, -1, 2.5):
        with pytest.raises(ArgumentError, match="limit: "):
            c.read_from_stream(stream_name, "g", "c", value)  # type: ignore[arg-type]
        with pytest.raises(ArgumentError, match="limit: "):
            c.read_entries(stream_name, "g", "c", value)  # type: ignore[arg-type]
    for value in (-1, 0):
        with pytest.raises(ArgumentError, match=f"maxlen: must be >= 1, got {value}"):
            c.add_to_stream(stream_name, push, maxlen=value)
        with pytest.raises(ArgumentError, match=f"maxlen: must be >= 1, got {value}"):
            c.add_many(stream_name, [push], maxlen=value)
    with pytest.raises(
        ArgumentError, match=r"stream: expected a non-empty name \(a str\), got None"
    ):
        c.add_to_stream(None, push)  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="group: expected a non-empty name"):
        c.read_from_stream(stream_name, None, "c", 1)  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="events: expected an iterable of events"):
        c.add_many(stream_name, "push")  # type: ignore[arg-type]
    with pytest.raises(EncodeError, match="event 1: an event is a StreamEvent or a mapping"):
        c.add_many(stream_name, [push, 7])  # type: ignore[list-item]
    assert c.redis.xlen(stream_name) == 0
    # The limit is a keyword too; 0 on range means no entry.
    c.add_many(stream_name, [push, push])
    assert len(c.read_from_stream(stream_name, "g", "c", limit=1)) == 1
    assert c.range(stream_name, limit=0) == []


def test_block_takes_a_duration_as_the_config_and_the_cli_do(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    streams_client.ensure_group(stream_name, "g")
    for block in ("20ms", "PT0.02S", 0.02, timedelta(milliseconds=20), 0, None):
        assert streams_client.read_from_stream(stream_name, "g", "c", 1, block=block) == []
    for block in (-1, "soon", True):
        with pytest.raises(ArgumentError, match="block: "):
            streams_client.read_from_stream(stream_name, "g", "c", 1, block=block)  # type: ignore[arg-type]
    [entry] = streams_client.add_many(stream_name, [StreamEvent(event_type="push")])
    [msg] = streams_client.read_from_stream(stream_name, "g", "c", 1, block="1s")
    assert msg.id == entry


def test_range_and_read_dlq_take_since_until_and_limit(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    ids = streams_client.add_many(stream_name, [StreamEvent(event_type="push")] * 5)
    assert [m.id for m in streams_client.range(stream_name, ids[1], ids[3])] == ids[1:4]
    assert [m.id for m in streams_client.range(stream_name, since=ids[2], limit=2)] == ids[2:4]
    assert [m.id for m in streams_client.range(stream_name, since=timedelta(hours=1))] == ids
    assert streams_client.range(stream_name, until=0) == []
    assert streams_client.range(stream_name, ids[3], ids[1]) == []
    # The DLQ: the client's routing, or the one given.
    r = streams_client.redis
    for name in (f"{stream_name}_dlq", f"{stream_name}:other"):
        r.xadd(name, {"event_type": b"push", "payload": b"{}", "dlq_error": name.encode()})
    [routed] = streams_client.read_dlq(stream_name, since=timedelta(minutes=5), limit=5)
    [other] = streams_client.read_dlq(stream_name, dlq=f"{stream_name}:other")
    assert routed.stream == f"{stream_name}_dlq"
    assert other.stream == f"{stream_name}:other"
    with pytest.raises(ValueError, match="since: 'soon' is neither"):
        streams_client.read_dlq(stream_name, since="soon")


def test_read_entries_of_mixed_layouts_decode_as_the_parsed_replies_do(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    """The consumer's decoding of entries as sent (names decoded per layout, streamlab's own
    layout straight to its decoders) gives what decoding redis-py's dicts gives, whatever
    follows what: own layouts in two orders, the platform's, a repeated name, a bad value."""
    [a, b] = sample_events(2, seed=3)
    own = encode_event(a)
    reordered = dict(reversed(list(encode_event(b).items())))
    r = streams_client.redis
    rows: list[list[object]] = [
        [x for kv in own.items() for x in kv],
        [x for kv in reordered.items() for x in kv],
        [x for kv in next(platform_entries(1, seed=2)).items() for x in kv],
        [x for kv in own.items() for x in kv],
        ["event_type", "push", "tenant_id", "t1", "event_type", "pull_request"],
        # As many names as streamlab's own layout, all known, one repeated and one missing.
        [x for kv in {**own, "retry_count": None}.items() if kv[1] is not None for x in kv]
        + ["id", "again"],
        [x for kv in {**own, "payload": b"{not json"}.items() for x in kv],
        [x for kv in own.items() for x in kv],
    ]
    for row in rows:
        r.execute_command("XADD", stream_name, "*", *row)
    streams_client.ensure_group(stream_name, "g")
    sent = streams_client.read_entries(stream_name, "g", "c", 100)
    parsed = streams_client.range(stream_name)
    assert len(sent) == len(parsed) == len(rows)
    for (entry_id, fields), expected in zip(sent, parsed, strict=True):
        got = decode_message(stream_name, entry_id, fields)
        assert (got.id, got.event, got.fields) == (expected.id, expected.event, expected.fields)
        assert str(got.decode_error) == str(expected.decode_error)
    assert parsed[4].event is not None
    assert parsed[4].event.event_type == "pull_request"
    assert parsed[5].event is not None
    assert (parsed[5].event.id, parsed[5].event.retry_count) == ("again", 0)
    assert parsed[6].event is None
    assert "payload" in str(parsed[6].decode_error)
    assert parsed[0].event == a
    assert parsed[1].event == b

    # A run of entries decodes to what each gives alone: runs of streamlab's own layout take
    # the batched path, a bad value or another layout in the run the one-by-one path.
    def seen(msg: StreamMessage) -> tuple[object, ...]:
        return msg.id, msg.event, msg.fields, msg.delivery_count, str(msg.decode_error)

    one_by_one = [seen(decode_message(stream_name, eid, fields)) for eid, fields in sent]
    for run in ([0, 1, 3, 7], [0, 6, 7], [0, 2, 3], list(range(len(rows)))):
        batch = decode_entries(stream_name, [sent[i] for i in run])
        assert [seen(m) for m in batch] == [one_by_one[i] for i in run]


def test_runs_of_the_own_layout_give_the_hooks_results_without_calling_them(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    """A run of entries of streamlab's own layout is validated without the model's Python
    hooks (the tenant taken from the auth context, the time made UTC), its values brought to
    what the hooks make beforehand; a time of another shape sends the run through the full
    validator. Each entry decodes as it does alone, and as the model itself would."""
    from streamlab import events

    # The schema had the shape expected: the hot path really skips the hooks.
    assert events._own_validate != events._event_validator.validate_python
    r = streams_client.redis
    base = encode_event(next(iter(sample_events(1, seed=5))))
    rows = [
        base,
        {**base, "tenant_id": ""},  # the tenant from auth_context
        {**base, "tenant_id": "", "auth_context": '{"tenant_id": ""}'},  # none at all
        {**base, "timestamp": "2026-01-02T03:04:05.123456"},  # naive: taken as UTC
        {**base, "timestamp": "2026-01-02T05:04:05.123456+02:00"},  # another zone
        {**base, "timestamp": "soon"},  # a decode error naming the field
    ]
    for row in rows:
        r.xadd(stream_name, row)  # type: ignore[arg-type]
    streams_client.ensure_group(stream_name, "g")
    sent = streams_client.read_entries(stream_name, "g", "c", 100)
    one_by_one = [decode_message(stream_name, eid, fields) for eid, fields in sent]
    for run in ([0, 1, 2], [0, 3, 4], [0, 1, 5], list(range(len(rows)))):
        batch = decode_entries(stream_name, [sent[i] for i in run])
        assert [(m.event, str(m.decode_error)) for m in batch] == [
            (one_by_one[i].event, str(one_by_one[i].decode_error)) for i in run
        ]
    events_ = [m.event for m in one_by_one[:5]]
    assert all(events_)
    got = [e for e in events_ if e is not None]
    auth = got[1].auth_context
    assert auth is not None
    assert [e.tenant_id for e in got[:3]] == [base["tenant_id"], auth.tenant_id, ""]
    assert auth.tenant_id
    expected = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    assert [(e.timestamp, e.timestamp.tzinfo) for e in got[3:]] == [(expected, UTC)] * 2
    assert one_by_one[5].event is None
    assert "timestamp" in str(one_by_one[5].decode_error)
    # What the model itself makes of the same values.
    assert got[1] == StreamEvent.model_validate({**got[1].model_dump(), "tenant_id": ""})


def test_add_many_error_replies_leave_the_connection_in_step(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    """Every reply of a batch is read even when they are errors: the pooled connection's next
    command gets its own reply, not a leftover XADD error."""
    r = streams_client.redis
    r.set(stream_name, "not a stream")
    with pytest.raises(WrongTypeError):
        streams_client.add_many(stream_name, sample_events(50))
    assert r.get(stream_name) == b"not a stream"
    r.delete(stream_name)
    ids = streams_client.add_many(stream_name, sample_events(30, seed=1), batch_size=7)
    assert ids == [i.decode() for i, _ in r.xrange(stream_name)]


def test_add_many_cut_off_mid_write_writes_no_entry_twice(private_server: EmbeddedServer) -> None:
    """A connection killed while a batch is being written: the error reaches the caller, what
    was written stays written once, in order (nothing is re-sent), and the client works again
    after. The server's writes are paused (CLIENT PAUSE WRITE) once some entries are in, so
    the cut falls mid-batch."""
    named = redis.Redis.from_url(private_server.url, client_name="streamlab-producer")
    client = RedisStreamsClient(named)
    admin = private_server.client()
    events = list(sample_events(60_000, seed=4))
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            client.add_many("s", events, batch_size=len(events))
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=produce)
    writer.start()
    deadline = time.monotonic() + 60  # bounded wait for the first entries (about 1 s)
    while admin.xlen("s") == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    admin.client_pause(30_000, all=False)  # writes held; reads and CLIENT KILL still run
    try:
        assert 0 < admin.xlen("s") < len(events)
        killed = [
            admin.client_kill_filter(_id=c["id"])
            for c in admin.client_list()
            if c["name"] == "streamlab-producer"
        ]
        assert killed == [1]
        writer.join(timeout=60)
        assert not writer.is_alive()
    finally:
        admin.client_unpause()
    assert len(errors) == 1
    assert isinstance(errors[0], redis.ConnectionError)
    written = admin.xrange("s")
    assert 0 < len(written) < len(events)
    event_ids = [fields[b"id"] for _, fields in written]
    assert len(set(event_ids)) == len(event_ids)  # none written twice
    assert event_ids == [e.id.encode() for e in events[: len(written)]]  # in order, a prefix
    assert len(client.add_many("s", sample_events(5, seed=5))) == 5
    named.close()
    admin.close()
