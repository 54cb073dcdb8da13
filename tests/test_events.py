"""Encoding and decoding stream entries, without Redis."""

import json
from datetime import UTC, datetime

import pytest

from streamlab.errors import ConfigError, DecodeError
from streamlab.events import (
    AuthContext,
    Failure,
    StreamEvent,
    decode_event,
    decode_message,
    encode_event,
    entry_time,
)
from streamlab.keys import check_same_slot, dlq_key
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
