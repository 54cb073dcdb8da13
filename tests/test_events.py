"""Encoding and decoding stream entries, without Redis."""

import json
from datetime import UTC, datetime

import pytest

from streamlab.errors import ConfigError, DecodeError, EncodeError
from streamlab.events import (
    MAX_DEPTH,
    AuthContext,
    StreamEvent,
    decode_event,
    decode_message,
    encode_event,
)
from streamlab.ids import entry_time
from streamlab.keys import check_same_slot, dlq_key
from streamlab.records import FIELD_ALIASES, Failure, read_name, tenant_of
from streamlab.samples import platform_entries, sample_events


def raw(fields: dict[str, str | bytes]) -> dict[bytes, bytes]:
    return {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in fields.items()}


def test_roundtrip_keeps_every_attribute() -> None:
    for event in sample_events(50, seed=3):
        assert decode_event(raw(encode_event(event))) == event


def test_one_field_per_attribute_with_json_for_nested_values() -> None:
    event = StreamEvent(
        event_type="webhook.github.push",
        repository="acme/api",
        tenant_id="t1",
        payload={"ref": "refs/heads/main"},
        auth_context=AuthContext(tenant_id="t1", installation_id=7),
        timestamp=datetime(2026, 1, 1, 12, 0, tzinfo=UTC),
        retry_count=2,
    )
    fields = encode_event(event)
    assert json.loads(fields["payload"]) == {"ref": "refs/heads/main"}
    assert json.loads(fields["auth_context"])["installation_id"] == 7
    assert fields["timestamp"] == "2026-01-01T12:00:00.000000Z"
    assert fields["retry_count"] == "2"


def test_platform_entries_decode_with_their_own_names() -> None:
    entry = next(platform_entries(1, seed=1))
    event = decode_event(raw(entry))
    assert event.id == entry["event_id"]
    assert event.repository == entry["repo_name"]
    assert event.tenant_id == json.loads(entry["auth_context"])["tenant_id"]
    assert event.extra["sender_name"] == entry["sender_name"]
    assert json.loads(event.extra["metadata"]) == json.loads(entry["metadata"])
    assert encode_event(event)["sender_name"] == entry["sender_name"]


def test_missing_timestamp_comes_from_the_entry_id() -> None:
    event = decode_event(raw({"event_type": "x"}), entry_id="1700000000123-0")
    assert event.timestamp == entry_time("1700000000123-0")
    assert event.timestamp == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"event_type": "x", "payload": "{not json"}, "payload"),
        ({"event_type": "x", "auth_context": "[1,"}, "auth_context"),
        ({"payload": "{}"}, "event_type"),
        ({"event_type": "x", "retry_count": "abc"}, "retry_count"),
        ({"event_type": b"\xff\xfe\x00garbage"}, "event_type"),
        ({"event_type": "x", "timestamp": "yesterday"}, "timestamp"),
    ],
)
def test_bad_entries_name_the_field_and_the_entry(fields: dict[str, str], field: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_event(raw(fields), entry_id="5-1")
    assert info.value.field == field
    assert info.value.entry_id == "5-1"
    assert f"'{field}'" in str(info.value)
    assert "5-1" in str(info.value)


def test_decode_message_keeps_raw_fields_when_the_event_is_bad() -> None:
    msg = decode_message("s", b"5-1", {b"payload": b"\x00\xff", b"event_type": b"x"})
    assert msg.event is None
    assert msg.decode_error is not None
    assert msg.fields == {"payload": b"\x00\xff", "event_type": b"x"}


def test_binary_unknown_fields_are_kept_as_bytes() -> None:
    event = decode_event({b"event_type": b"x", b"blob": b"\x00\xff"})
    assert event.extra == {"blob": b"\x00\xff"}


def test_retry_count_adds_deliveries_so_far() -> None:
    fields = raw(encode_event(StreamEvent(event_type="x", retry_count=1)))
    assert decode_message("s", "1-0", fields, delivery_count=3).event.retry_count == 3  # type: ignore[union-attr]


def test_failure_record_roundtrip() -> None:
    failure = Failure(error="boom", error_type="ValueError", attempts=4, source_id="1-0")
    assert Failure.from_fields(failure.to_fields()) == failure
    assert Failure.from_fields({"event_type": "x"}) is None


def test_dlq_key_and_cluster_slots() -> None:
    assert dlq_key("webhook_events") == "webhook_events_dlq"
    assert dlq_key("webhook_events", "dead") == "dead"
    check_same_slot("{webhook_events}", dlq_key("{webhook_events}"))
    with pytest.raises(ConfigError, match=r"\{webhook_events\}_dlq"):
        check_same_slot("webhook_events", dlq_key("webhook_events"))


# --- what a producer may write: JSON others can read, nested no deeper than the decoder reads


def nested(depth: int, leaf: object = 1) -> object:
    """``leaf`` inside ``depth`` arrays."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        (float("nan"), "payload"),
        ({"items": [{"price": 1.5}, {"price": float("inf")}]}, "payload.items[1].price"),
        ([1, 2, {"a": {"b": float("-inf")}}], "payload[2].a.b"),
    ],
)
def test_nan_and_infinity_are_refused_naming_the_field_path(payload: object, path: str) -> None:
    # Both were written as bare NaN / Infinity, which no other JSON reader accepts.
    event = StreamEvent(id="evt-1", event_type="t", payload=payload)
    with pytest.raises(EncodeError) as info:
        encode_event(event)
    assert (info.value.field, info.value.event_id) == (path, "evt-1")
    assert str(info.value).startswith(f"event 'evt-1': {path}: ")
    assert "not a JSON number" in str(info.value)


def test_nan_in_auth_context_is_refused_not_turned_into_null() -> None:
    auth = AuthContext(tenant_id="t", metadata={"score": float("nan")})
    with pytest.raises(EncodeError, match=r"auth_context\.metadata\.score: nan is not a JSON"):
        encode_event(StreamEvent(id="e", event_type="t", auth_context=auth))


def test_one_depth_limit_for_producing_and_decoding() -> None:
    # A payload 201-254 deep was written, then refused by every consumer.
    deepest = StreamEvent(event_type="t", payload=nested(MAX_DEPTH))
    assert decode_event(raw(encode_event(deepest))) == deepest
    auth = AuthContext(metadata={"k": nested(MAX_DEPTH - 2)})  # 2 objects around it
    event = StreamEvent(event_type="t", auth_context=auth)
    assert decode_event(raw(encode_event(event))) == event
    for depth in (MAX_DEPTH + 1, 254, 255, 1000):
        with pytest.raises(EncodeError, match=f"nested deeper than {MAX_DEPTH} levels") as info:
            encode_event(StreamEvent(id="deep", event_type="t", payload=nested(depth)))
        assert (info.value.field, info.value.event_id) == ("payload", "deep")
    too_deep = AuthContext(metadata={"k": nested(MAX_DEPTH - 1)})
    with pytest.raises(EncodeError, match="auth_context: nested deeper"):
        encode_event(StreamEvent(event_type="t", auth_context=too_deep))
    # What another service wrote deeper is a DecodeError saying so, for both JSON fields.
    text = json.dumps(nested(MAX_DEPTH + 1))
    with pytest.raises(DecodeError, match=f"'payload': nested deeper than {MAX_DEPTH}"):
        decode_event({"event_type": "t", "payload": text}, entry_id="1-0")
    context = json.dumps({"metadata": {"k": nested(MAX_DEPTH - 1)}})
    with pytest.raises(DecodeError, match=f"'auth_context': nested deeper than {MAX_DEPTH}"):
        decode_event({"event_type": "t", "auth_context": context}, entry_id="1-0")


def test_a_value_json_cannot_encode_names_the_field_not_the_value() -> None:
    with pytest.raises(EncodeError, match=r"payload: cannot be encoded as JSON .*object"):
        encode_event(StreamEvent(id="e", event_type="t", payload={"k": object()}))


def test_strings_that_look_like_nan_or_many_brackets_are_fine() -> None:
    payload = {"text": "NaN Infinity " + "[{" * 300, "n": 1.5, "list": [[]] * 300}
    event = StreamEvent(event_type="t", payload=payload)
    assert decode_event(raw(encode_event(event))) == event


# --- decoding is deterministic, and what it gives can be written back unchanged -------------


def test_an_entry_without_an_id_decodes_to_the_same_event_each_time() -> None:
    fields = {b"event_type": b"push"}
    first = decode_message("s", b"1700000000000-3", fields)
    again = decode_message("s", b"1700000000000-3", fields, delivery_count=2)
    assert first.event is not None
    assert again.event is not None
    assert first.event.id == again.event.id == "1700000000000-3"


@pytest.mark.parametrize(
    "fields",
    [
        {"event_type": "t", "repo_name": "alias", "repository": "own"},
        {"event_type": "t", "repository": "own", "repo_name": "alias"},
    ],
)
def test_streamlab_s_own_name_wins_over_an_alias_in_any_order(fields: dict[str, str]) -> None:
    event = decode_event(raw(fields))
    assert event.repository == "own"
    assert event.extra == {"repo_name": "alias"}
    assert decode_event(raw(encode_event(event))) == event


@pytest.mark.parametrize(("alias", "own"), FIELD_ALIASES.items())
def test_every_alias_loses_to_the_own_name_and_is_kept(alias: str, own: str) -> None:
    for fields in ({alias: "alias", own: "own"}, {own: "own", alias: "alias"}):
        event = decode_event(raw({"event_type": "t", **fields}), entry_id="1-0")
        assert getattr(event, own) == "own"
        assert event.extra == {alias: "alias"}
    alone = decode_event(raw({"event_type": "t", alias: "alias"}), entry_id="1-0")
    assert (getattr(alone, own), alone.extra) == ("alias", {})


def test_the_precedence_rule_is_the_order_of_aliases_of() -> None:
    names = ("repo", "repo_name", "repository")
    assert read_name("repository", names) == "repository"
    assert read_name("repository", names[:2]) == read_name("repository", names[1::-1])
    assert read_name("repository", ["repo", "repo_name"]) == "repo_name"  # listed first
    assert read_name("repository", {"event_type"}) is None
    assert read_name("event_type", {"event_type"}) == "event_type"  # a name without aliases
    # The same rule on a raw reply's names (bytes).
    assert read_name(b"id", {b"event_id": b"1", b"id": b"2"}) == b"id"
    assert read_name(b"tenant_id", {b"tenant": b"t"}) == b"tenant"
    assert read_name(b"repository", [b"repo", b"repo_name"]) == b"repo_name"
    assert read_name(b"event_type", {b"event_type": b"t"}) == b"event_type"
    assert read_name(b"repository", {"repository"}) is None  # a text name is no raw one
    # Two aliases of one field: the one listed first, whatever the entry's order.
    for fields in ({"repo": "b", "repo_name": "a"}, {"repo_name": "a", "repo": "b"}):
        event = decode_event(raw({"event_type": "t", **fields}))
        assert (event.repository, event.extra) == ("a", {"repo": "b"})


def test_the_tenant_rule() -> None:
    auth = '{"tenant_id": "in-auth"}'
    assert tenant_of("own", auth) == "own"
    assert tenant_of("", auth) == tenant_of(None, auth.encode()) == "in-auth"
    assert tenant_of(None, AuthContext(tenant_id="in-auth")) == "in-auth"
    assert tenant_of(None, None) == tenant_of("", "{oops") == ""
    assert tenant_of("", '{"tenant_id": 3}') == tenant_of("", "{}") == ""
    # An empty tenant field counts as none; an alias that lost is never read.
    fields = {"event_type": "t", "tenant_id": "", "tenant": "alias", "auth_context": auth}
    assert decode_event(raw(fields)).tenant_id == "in-auth"
    # The model fills the tenant only when it has one to fill (an assignment marks it set).
    unfilled = StreamEvent(event_type="t", auth_context=AuthContext())
    assert "tenant_id" not in unfilled.model_fields_set


def test_extra_fields_cannot_shadow_attributes() -> None:
    # encode_event would drop them silently (the attribute is written under that name).
    with pytest.raises(ValueError, match=r"extra fields \['payload'\] are attributes"):
        StreamEvent(event_type="t", extra={"payload": "x"})


def test_an_event_without_a_tenant_takes_its_auth_context_s() -> None:
    event = StreamEvent(event_type="t", auth_context=AuthContext(tenant_id="acme"))
    assert event.tenant_id == "acme"
    assert decode_event(raw(encode_event(event))) == event


def test_default_ids_are_distinct_canonical_uuid4_texts() -> None:
    import uuid

    ids = [StreamEvent(event_type="push", repository="o/r", tenant_id="t").id for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    variants = set()
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text
        variants.add(text[19])
    assert variants == set("89ab")


def test_default_ids_are_distinct_across_threads_and_a_fork() -> None:
    """Ids are drawn in batches: threads taking them at once never get the same one, and a
    forked child does not hand out the ids its parent had drawn and not used yet."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    def ids(n: int) -> list[str]:
        return [StreamEvent(event_type="push").id for _ in range(n)]

    with ThreadPoolExecutor(4) as pool:
        taken = [i for chunk in pool.map(ids, [3000] * 4) for i in chunk]
    assert len(set(taken)) == len(taken) == 12_000

    ids(1)  # the parent now holds drawn, unused ids
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write its next ids and leave at once
        os.close(read_end)
        os.write(write_end, "\n".join(ids(300)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child = set(pipe.read().decode().split("\n"))
    _, status = os.waitpid(pid, 0)
    assert status == 0
    assert len(child) == 300
    assert child.isdisjoint(ids(300))


def test_own_layout_fast_path_decodes_as_the_general_path() -> None:
    event = next(iter(sample_events(1)))
    own = {k: v.encode() if isinstance(v, str) else v for k, v in encode_event(event).items()}
    fast = decode_event(own, entry_id="1-0")
    general = decode_event({**own, "x-other": b"1"}, entry_id="1-0")  # not own layout
    assert fast == general.model_copy(update={"extra": fast.extra})
    assert fast == event
    with pytest.raises(DecodeError, match="payload") as info:
        decode_event({**own, "payload": b"{not json"}, entry_id="1-0")
    assert info.value.entry_id == "1-0"
    with pytest.raises(DecodeError, match="retry_count"):
        decode_event({**own, "retry_count": b"many"}, entry_id="1-0")


def test_a_message_of_the_own_layout_builds_its_fields_when_asked() -> None:
    """An entry of streamlab's own layout, as the consumer reads it (a flat reply), is
    decoded straight from the reply; its ``fields`` dict, built only when asked for, is what
    an eagerly decoded message holds, and the two messages are equal."""
    event = next(iter(sample_events(1)))
    own = {k: v.encode() if isinstance(v, str) else v for k, v in encode_event(event).items()}
    flat = [x for name, value in own.items() for x in (name.encode(), value)]
    lazy = decode_message("s", b"1-0", flat, delivery_count=2)
    eager = decode_message("s", "1-0", {k.encode(): v for k, v in own.items()}, 2)
    assert list(lazy.fields) == list(own)  # in the order sent
    assert lazy.event == eager.event
    assert lazy.event is not None
    assert lazy.event.retry_count == event.retry_count + 1  # the second delivery
    assert lazy.fields == own
    assert lazy.fields is lazy.fields  # built once
    assert lazy == eager
    assert repr(lazy) == repr(eager)
    assert "payload" in repr(lazy)
    # A bad value in the own layout is a decode error naming it, with the fields kept.
    broken = [*flat[:-2], b"auth_context", b"{oops"]
    bad = decode_message("s", b"1-1", broken)
    assert bad.event is None
    assert bad.decode_error is not None
    assert bad.decode_error.field == "auth_context"
    assert bad.fields["auth_context"] == b"{oops"
