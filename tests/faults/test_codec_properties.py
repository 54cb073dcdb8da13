"""Fault scenario 16, bad input: property-based tests (hypothesis) of the wire format.

- Any valid `StreamEvent` round-trips: ``encode_event`` then ``decode_event`` give it back, and
  so does a real server (``add_many``, then a read). Any event the model accepts (NaN, lone
  surrogates, deep nesting included) is written whole or refused with `EncodeError` naming
  the field, writing nothing.
- Any field map (arbitrary bytes names and values, biased towards streamlab's own field names
  and near-miss values) decodes or raises `DecodeError`, never anything else, and the error's
  text holds none of the entry's values. The DataFrame exporters never raise on it either.
- A consumer fed such maps handles every decodable entry and dead-letters every other one:
  nothing lost, nothing left pending, no DLQ double (one ledger row for RELIABILITY.md).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faults.ledger import LedgerResult, ledger_check
from streamlab.client import RedisStreamsClient
from streamlab.consumer import Consumer, ConsumerConfig
from streamlab.errors import DecodeError, EncodeError
from streamlab.events import (
    MAX_DEPTH,
    AuthContext,
    StreamEvent,
    StreamMessage,
    decode_entries,
    decode_event,
    decode_message,
    encode_event,
)
from streamlab.frames import stream_to_dataframe
from streamlab.records import REPLAY_FIELDS

pytestmark = pytest.mark.fault


def examples(n: int) -> int:
    """``n``, or ``$HUNT`` to search harder by hand (``HUNT=5000 pytest ...``)."""
    return int(os.environ.get("HUNT", str(n)))


FAST = settings(
    max_examples=examples(200),
    deadline=None,
    database=None,  # no .hypothesis folder in the checkout; failures print their example
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --- valid events ---------------------------------------------------------------------------

# Text fields: any Unicode text that UTF-8 can carry (no lone surrogates).
text = st.text(max_size=30)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=25,
)


def nested(depth: int, leaf: Any) -> Any:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


payloads = json_values | st.builds(
    nested, st.sampled_from([MAX_DEPTH - 1, MAX_DEPTH]), json_scalars
)
auth_contexts = st.builds(
    AuthContext,
    tenant_id=text,
    principal_id=text,
    principal_type=text,
    installation_id=st.none() | st.integers(min_value=0, max_value=2**62) | text,
    app_id=st.none() | st.integers(min_value=0, max_value=2**62),
    permissions=st.lists(text, max_size=3) | st.dictionaries(text, json_values, max_size=3),
    metadata=st.dictionaries(text, json_values, max_size=3),
)
HOUR = timedelta(hours=1)
times = st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-HOUR)]),
)
# Unknown fields are kept verbatim; they are names no streamlab attribute reads.
KNOWN_NAMES = {"id", "event_id", "event_type", "repository", "repo_name", "repo", "tenant_id"}
KNOWN_NAMES |= {"tenant", "payload", "auth_context", "timestamp", "retry_count"}
extra_names = text.filter(lambda name: name not in KNOWN_NAMES)
events = st.builds(
    StreamEvent,
    id=text,
    event_type=text,
    repository=text,
    tenant_id=text,
    payload=payloads,
    auth_context=st.none() | auth_contexts,
    timestamp=times,
    retry_count=st.integers(min_value=0, max_value=2**70),
    extra=st.dictionaries(extra_names, text | st.binary(max_size=20), max_size=3),
)


def as_read(fields: dict[str, str | bytes]) -> dict[bytes, bytes]:
    """Entry fields as a redis-py client created with decode_responses=False reads them."""
    return {
        k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in fields.items()
    }  # fmt: skip


def expected(event: StreamEvent) -> StreamEvent:
    """``event`` as decoding gives it back: unknown fields that are UTF-8 come back as text."""
    extra = {
        k: v.decode() if isinstance(v, bytes) and _utf8(v) else v for k, v in event.extra.items()
    }
    return event.model_copy(update={"extra": extra})


def _utf8(value: bytes) -> bool:
    try:
        value.decode()
    except UnicodeDecodeError:
        return False
    return True


@FAST
@given(events)
def test_any_valid_event_round_trips_through_the_codec(event: StreamEvent) -> None:
    assert decode_event(as_read(encode_event(event))) == expected(event)


@settings(FAST, max_examples=examples(100))
@given(st.lists(events, min_size=1, max_size=5))
def test_any_valid_event_round_trips_through_a_server(
    streams_client: RedisStreamsClient, stream_name: str, batch: list[StreamEvent]
) -> None:
    ids = streams_client.add_many(stream_name, batch)
    back = {m.id: m for m in streams_client.range(stream_name, ids[0], ids[-1])}
    assert [back[i].event for i in ids] == [expected(e) for e in batch]
    assert all(back[i].decode_error is None for i in ids)


# Any event the model accepts, including text UTF-8 cannot carry, NaN and deep nesting.
any_text = st.text(st.characters(exclude_categories=()), max_size=10)
any_values = st.recursive(
    st.none() | st.floats() | st.integers() | any_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=10,
)
any_events = st.builds(
    StreamEvent,
    id=any_text,
    event_type=any_text,
    payload=any_values | st.builds(nested, st.integers(MAX_DEPTH - 2, MAX_DEPTH + 60), st.none()),
    auth_context=st.none() | st.builds(AuthContext, metadata=st.dictionaries(text, any_values)),
    extra=st.dictionaries(any_text.filter(lambda n: n not in KNOWN_NAMES), any_text, max_size=2),
)


@settings(FAST, max_examples=examples(150))
@given(any_events)
def test_any_event_is_written_whole_or_refused_with_encode_error_writing_nothing(
    streams_client: RedisStreamsClient, stream_name: str, event: StreamEvent
) -> None:
    before = streams_client.redis.xlen(stream_name)
    entry_id, error = _add(streams_client, stream_name, event)
    if error is not None:
        assert (error.event_id, bool(error.field)) == (event.id, True), "it names the field"
        assert streams_client.redis.xlen(stream_name) == before, "nothing was written"
        return
    [message] = streams_client.range(stream_name, entry_id, entry_id)
    assert message.event == expected(event)


def _add(
    client: RedisStreamsClient, stream: str, event: StreamEvent
) -> tuple[str | None, EncodeError | None]:
    """The new entry's id, or the `EncodeError`; any other exception fails the test."""
    try:
        return client.add_to_stream(stream, event), None
    except EncodeError as exc:
        return None, exc


# --- arbitrary field maps -------------------------------------------------------------------

NAMES = [
    b"id", b"event_id", b"event_type", b"repository", b"repo_name", b"repo", b"tenant_id",
    b"tenant", b"payload", b"auth_context", b"timestamp", b"retry_count", b"dlq_error",
    b"dlq_attempts", b"metadata", b"sender_name", b"",
]  # fmt: skip


def _json_text(value: Any) -> bytes:
    return json.dumps(value).encode()


near_miss_values = st.sampled_from([
    b"", b"null", b"NaN", b"Infinity", b"-Infinity", b"1e400", b"9223372036854775808",
    b"-1", b"18446744073709551616", b"0", b"true", b"[]", b"{}", b'"x"', b"{", b"\xff\xfe",
    b"2026-01-01T00:00:00Z", b"2026-13-45T99:99:99Z", b"0001-01-01T00:00:00.000000Z",
    b"9999-12-31T23:59:59.999999Z", b"yesterday", b"1700000000000-0",
    b'{"tenant_id": 5}', b'{"permissions": "x"}', b'{"installation_id": []}',
    b'{"tenant_id": "t", "unknown": {"a": [1, 2]}}',
    b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1),
    b"[" * MAX_DEPTH + b"]" * MAX_DEPTH,
    b"[" * 5000,
])  # fmt: skip
values = st.binary(max_size=40) | near_miss_values | st.builds(_json_text, json_values)
field_maps = st.dictionaries(
    st.sampled_from(NAMES) | st.binary(max_size=12), values, max_size=8
)  # fmt: skip


def _texts(fields: dict[bytes, bytes]) -> list[str]:
    """The values long enough that finding one in an error text cannot be a coincidence."""
    out = []
    for value in fields.values():
        decoded = value.decode("utf-8", "ignore")
        if len(decoded) >= 12 and not set(decoded) <= set("[]{}0123456789-.:TZ "):
            out.append(decoded)
    return out


@FAST
@given(field_maps)
def test_any_field_map_decodes_or_raises_decode_error_only(fields: dict[bytes, bytes]) -> None:
    event, error = _decode(fields, "1700000000000-0")
    if error is not None:
        assert error.entry_id == "1700000000000-0"
        message = str(error)
        for value in _texts(fields):
            assert value not in message, "an error text must not hold the entry's values"
        message_obj = decode_message("s", b"1700000000000-0", fields)
        assert message_obj.event is None
        assert str(message_obj.decode_error) == message
        return
    assert isinstance(event, StreamEvent), "decoding gives an event or a DecodeError"
    # The same entry decodes to the same event every time (repr: NaN != NaN).
    assert repr(decode_message("s", b"1700000000000-0", fields).event) == repr(event)
    # What decodes can be written again, as a consumer re-publishing it would.
    if _encodable(event):
        assert decode_event(as_read(encode_event(event))) == expected(event)


OWN = [b"id", b"event_type", b"repository", b"tenant_id", b"payload", b"auth_context",
       b"timestamp", b"retry_count"]  # fmt: skip
# Entries of streamlab's own layout (its names, in any order) with any values, good or bad.
own_entries = st.lists(
    st.tuples(st.permutations(OWN), st.lists(values, min_size=8, max_size=8)).map(
        lambda nv: [x for pair in zip(*nv, strict=True) for x in pair]
    ),
    min_size=1,
    max_size=20,
)
good_value = {
    b"payload": st.builds(_json_text, json_values),
    b"auth_context": st.just(b'{"tenant_id": "t1"}') | st.just(b"null") | st.just(b""),
    b"retry_count": st.integers(0, 9).map(lambda n: str(n).encode()),
}


@FAST
@given(own_entries, st.data())
def test_a_run_of_own_layout_entries_decodes_as_each_entry_alone(
    flats: list[list[bytes]], data: st.DataObject
) -> None:
    """`decode_entries` (the consumer's decoding of new entries, in runs) gives each entry
    what `decode_message` gives it alone, whether the run's values are all good (its batched
    path) or not (one bad value sends the run one entry at a time)."""
    if data.draw(st.booleans()):  # mostly good values: the batched path's case
        for flat in flats:
            for i in range(0, 16, 2):
                if flat[i] in good_value:
                    flat[i + 1] = data.draw(good_value[flat[i]])
                elif flat[i] == b"timestamp":
                    flat[i + 1] = b"2026-12-04T10:00:00.123456Z"
                else:
                    flat[i + 1] = data.draw(st.text("abc-/é", max_size=8)).encode()
    entries = [(f"1700000000000-{n}".encode(), flat) for n, flat in enumerate(flats)]

    def seen(msg: StreamMessage) -> tuple[Any, ...]:
        return msg.id, repr(msg.event), msg.fields, str(msg.decode_error)

    alone = [seen(decode_message("s", eid, flat)) for eid, flat in entries]
    assert [seen(m) for m in decode_entries("s", entries)] == alone


def _decode(fields: dict[bytes, bytes], entry_id: str) -> tuple[Any, DecodeError | None]:
    """The event, or the `DecodeError`; any other exception fails the test."""
    try:
        return decode_event(fields, entry_id=entry_id), None
    except DecodeError as exc:
        return None, exc


def _encodable(event: StreamEvent) -> bool:
    # Surrogate-escaped names (not UTF-8 in the entry) and floats JSON has no word for are
    # the two things a decoder accepts (tolerant reading) and an encoder refuses.
    names_ok = all(_utf8(k.encode("utf-8", "surrogateescape")) for k in event.extra)
    return names_ok and not _has_non_finite(event.payload)


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_non_finite(v) for v in value)
    return False


@settings(FAST, max_examples=examples(40))
@given(st.lists(field_maps.filter(bool), min_size=1, max_size=10))
def test_exporters_never_raise_on_any_field_map(
    redis_client: redis.Redis, stream_name: str, entries: list[dict[bytes, bytes]]
) -> None:
    redis_client.delete(stream_name)
    for fields in entries:
        redis_client.xadd(stream_name, fields)  # type: ignore[arg-type]
    df = stream_to_dataframe(redis_client, stream_name, payload_fields=["a.b", "0"])
    assert len(df) == len(entries)


# --- the consumer on such entries: the ledger -------------------------------------------------

ledger_maps = (
    field_maps.filter(bool)
    .map(
        # A replay marker makes other groups skip an entry by design (fault issue, defect 4).
        lambda m: {k: v for k, v in m.items() if k.decode("utf-8", "replace") not in REPLAY_FIELDS}
    )
    .filter(bool)
)


def test_a_consumer_handles_or_dead_letters_every_generated_entry(
    streams_client: RedisStreamsClient,
    redis_client: redis.Redis,
    stream_name: str,
    fault_report: Any,
) -> None:
    results: list[LedgerResult] = []

    @settings(FAST, max_examples=8)
    @given(st.lists(ledger_maps, min_size=20, max_size=60), st.lists(events, max_size=20))
    def run(entries: list[dict[bytes, bytes]], valid: list[StreamEvent]) -> None:
        stream = f"{stream_name}:{len(results)}"
        ids = [redis_client.xadd(stream, f).decode() for f in entries]  # type: ignore[arg-type]
        ids += streams_client.add_many(stream, valid)
        handled: Counter[str] = Counter()

        def handler(msg: StreamMessage) -> None:
            handled[msg.id] += 1

        config = ConsumerConfig(stream=stream, group="g", consumer="c", batch_size=25)
        Consumer(streams_client, config).run(handler, burst=True, handle_signals=False)
        result = ledger_check(redis_client, stream, "g", ids, handled, dlq=f"{stream}_dlq")
        result.assert_nothing_lost()
        decodable = {i for i, f in zip(ids, entries, strict=False) if _decodes(f)}
        assert decodable <= set(handled), "every decodable entry reached the handler"
        assert result.dlq == len(entries) - len(decodable), "every other one is in the DLQ"
        results.append(result)
        redis_client.delete(stream, f"{stream}_dlq")

    run()
    total = LedgerResult(
        events=sum(r.events for r in results),
        handled=sum(r.handled for r in results),
        duplicated=sum(r.duplicated for r in results),
        lost=sum(r.lost for r in results),
        dlq_doubles=sum(r.dlq_doubles for r in results),
        pending=sum(r.pending for r in results),
        dlq=sum(r.dlq for r in results),
        handled_and_dead=sum(r.handled_and_dead for r in results),
    )
    fault_report(
        scenario="16 codec properties",
        fault="hypothesis-generated field maps (bytes names and values, near-miss JSON, "
        "times and ints) and valid events, through one consumer",
        result=total,
        client=redis_client,
    )


def _decodes(fields: dict[bytes, bytes]) -> bool:
    return _decode(fields, "1-0")[1] is None
