"""The consumer's decisions and the backoff schedule, without Redis."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from streamlab.backoff import Backoff, compute_backoff
from streamlab.consumer import ConsumerConfig
from streamlab.errors import ArgumentError, ConfigError, DecodeError, Reject, Retry
from streamlab.events import StreamEvent, StreamMessage, decode_message, encode_event
from streamlab.policy import (
    DUE_SLACK_MS,
    MAX_RETRY_DELAY,
    RETRY_CONSUMER,
    Action,
    Parked,
    after_failure,
    before_handler,
    dlq_minid,
    dlq_retention_ms,
    failure_record,
    max_delay,
    retry_due_ms,
    retry_idle_ms,
    schedule_error,
    sort_claimed,
    sort_parked,
)
from streamlab.records import REPLAY_FIELDS, ReplayMarker


def message(delivery_count: int = 1, **fields: bytes) -> StreamMessage:
    """A push event's entry with ``fields`` added, decoded as the consumer decodes it."""
    event = StreamEvent(event_type="push")
    raw = {k: v if isinstance(v, bytes) else v.encode() for k, v in encode_event(event).items()}
    return decode_message("s", "1-0", {**raw, **fields}, delivery_count)


def test_seed_schedule_is_immediate_then_one_then_two_seconds() -> None:
    assert [compute_backoff(n) for n in (1, 2, 3, 4, 5)] == [0.0, 1.0, 2.0, 4.0, 8.0]


def test_schedule_is_capped_and_can_start_with_a_delay() -> None:
    policy = Backoff(initial=timedelta(seconds=0.5), multiplier=3, max=timedelta(seconds=5))
    assert [compute_backoff(n, policy) for n in (1, 2, 3, 4)] == [0.0, 0.5, 1.5, 4.5]
    assert compute_backoff(9, policy) == 5.0
    delayed = Backoff(first_immediate=False)
    assert [compute_backoff(n, delayed) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]


def test_jitter_spreads_both_ways_within_its_fraction() -> None:
    policy = Backoff(jitter=0.25)
    assert compute_backoff(3, policy, rand=lambda: 0.0) == 1.5
    assert compute_backoff(3, policy, rand=lambda: 1.0) == 2.5
    assert max_delay(3, policy) == 2.5


def test_retry_numbers_start_at_one() -> None:
    for bad, says in [
        (0, "must be >= 1, got 0"),
        (True, "expected an int >= 1"),
        (1.5, "expected an int >= 1, got 1.5"),
    ]:
        with pytest.raises(ArgumentError, match=f"^retry: {says}"):
            compute_backoff(bad)  # type: ignore[arg-type]
    assert compute_backoff(1) == 0.0


def test_failures_retry_until_max_retries_then_dead_letter() -> None:
    actions = [after_failure(ValueError("x"), n, 3, Backoff()) for n in (1, 2, 3, 4)]
    assert [a.action for a in actions] == [Action.RETRY] * 3 + [Action.DEAD_LETTER]
    assert [a.delay for a in actions[:3]] == [0.0, 1.0, 2.0]
    assert actions[3].error_type == "ValueError"
    assert actions[3].error_text == "x"


def test_reject_dead_letters_at_once_and_retry_carries_its_delay() -> None:
    assert after_failure(Reject("no"), 1, 3, Backoff()).action is Action.DEAD_LETTER
    decision = after_failure(Retry(delay=7.5), 1, 3, Backoff())
    assert (decision.action, decision.delay) == (Action.RETRY, 7.5)
    nack = after_failure(None, 1, 3, Backoff())
    assert (nack.action, nack.error_type) == (Action.RETRY, "Nack")


def test_before_handler_dead_letters_undecodable_entries() -> None:
    err = DecodeError("invalid JSON", field="payload", entry_id="1-0")
    msg = StreamMessage("s", "1-0", None, {"payload": b"{"}, 1, err)
    decision = before_handler(msg, "g", 3)
    assert decision.action is Action.DEAD_LETTER
    assert decision.error_type == "DecodeError"
    assert "payload" in decision.error_text
    assert "1-0" in decision.error_text


def marker_fields(group: str = "other", **changes: str) -> dict[str, bytes]:
    marker = ReplayMarker(
        replay_id=str(uuid.uuid4()),
        source_id="1700000000000-3",
        count=2,
        replayed_at=datetime(2026, 1, 2, 3, 4, 5, 600, tzinfo=UTC),
        group=group,
    )
    fields = {**marker.to_fields(), **changes}
    return {k: v.encode() for k, v in fields.items()}


def test_replay_marker_round_trips_and_is_namespaced() -> None:
    fields = marker_fields()
    assert all(name.startswith("streamlab:") for name in fields)
    assert set(fields) == set(REPLAY_FIELDS)
    marker = ReplayMarker.from_fields(fields)
    assert marker is not None
    assert ReplayMarker.from_fields({k.encode(): v for k, v in fields.items()}) == marker
    assert {k: v.encode() for k, v in marker.to_fields().items()} == fields
    assert (marker.source_id, marker.count, marker.group) == ("1700000000000-3", 2, "other")


def test_before_handler_skips_replays_meant_for_another_group() -> None:
    assert before_handler(message(**marker_fields("other")), "g", 3).action is Action.SKIP
    assert before_handler(message(**marker_fields("g")), "g", 3).action is Action.HANDLE
    # An empty group: replayed for every group.
    assert before_handler(message(**marker_fields("")), "g", 3).action is Action.HANDLE


def test_a_producers_replay_group_field_is_an_ordinary_event() -> None:
    """Defect 4: a field named ``replay_group`` made every other group ack the entry unseen."""
    bare = message(replay_group=b"other", replay_id=b"x", replay_of=b"1-1")
    assert before_handler(bare, "g", 3).action is Action.HANDLE
    assert ReplayMarker.from_fields(bare.fields) is None


@pytest.mark.parametrize("missing", REPLAY_FIELDS)
def test_a_partial_marker_is_an_ordinary_event(missing: str) -> None:
    fields = marker_fields("other")
    del fields[missing]
    assert ReplayMarker.from_fields(fields) is None
    assert before_handler(message(**fields), "g", 3).action is Action.HANDLE


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("streamlab:replay_id", ""),
        ("streamlab:replay_id", "a b"),
        ("streamlab:replay_id", "x" * 129),
        ("streamlab:replay_of", "yesterday"),
        ("streamlab:replay_of", "1-"),
        ("streamlab:replay_count", "0"),
        ("streamlab:replay_count", "-1"),
        ("streamlab:replay_count", "two"),
        ("streamlab:replayed_at", "now"),
        ("streamlab:replayed_at", "2026-01-02T03:04:05"),  # no time zone
    ],
)
def test_a_malformed_marker_is_an_ordinary_event(name: str, value: str) -> None:
    fields = marker_fields("other", **{name: value})
    assert ReplayMarker.from_fields(fields) is None
    assert before_handler(message(**fields), "g", 3).action is Action.HANDLE


def test_a_marker_with_bytes_that_are_not_utf8_is_an_ordinary_event() -> None:
    fields = {**marker_fields("other"), "streamlab:replay_group": b"\xff"}
    assert ReplayMarker.from_fields(fields) is None
    assert before_handler(message(**fields), "g", 3).action is Action.HANDLE


def test_before_handler_dead_letters_messages_whose_consumers_keep_dying() -> None:
    assert before_handler(message(delivery_count=4), "g", 3).action is Action.HANDLE
    decision = before_handler(message(delivery_count=5), "g", 3)
    assert (decision.action, decision.error_type) == (Action.DEAD_LETTER, "ConsumerDied")


def test_retry_idle_makes_the_entry_due_after_its_delay() -> None:
    assert retry_idle_ms(0.0, timedelta(seconds=60)) == 60_000
    assert retry_idle_ms(2.0, timedelta(seconds=60)) == 58_000
    # Longer than the claim clock: shown after claim_min_idle, then parked again.
    assert retry_idle_ms(90.0, timedelta(seconds=60)) == 0
    assert retry_idle_ms(float("nan"), timedelta(seconds=60)) == 60_000


def test_retry_due_times_are_bounded() -> None:
    assert retry_due_ms(2.5, 1_000) == 3_500
    assert retry_due_ms(-1.0, 1_000) == 1_000
    assert retry_due_ms(float("nan"), 1_000) == 1_000
    assert retry_due_ms(float("inf"), 0) == retry_due_ms(1e12, 0) == MAX_RETRY_DELAY * 1000


def test_parked_retries_are_claimed_when_due_and_parked_again_until_then() -> None:
    now, cmi = 1_000_000, 30_000
    parked = sort_parked(
        {
            "1-0": None,  # no due time: the claim clock alone decides
            "2-0": now - 5,  # overdue
            "3-0": now + DUE_SLACK_MS,  # due within the slack
            "4-0": now + 12_000,  # due before the claim clock shows it again
            "5-0": now + 86_400_000,  # a day away: shown again after claim_min_idle
            "6-0": now + 90_000,
        },
        now,
        cmi,
    )
    assert parked.due == ("1-0", "2-0", "3-0")
    assert parked.again == {18_000: ("4-0",), 0: ("5-0", "6-0")}
    assert parked.soonest == 12.0
    assert sort_parked({}, now, cmi) == Parked((), {}, None)


def test_schedule_error_names_the_30_day_bound() -> None:
    assert schedule_error(3, Backoff(initial=timedelta(hours=24), max=timedelta(hours=24))) is None
    error = schedule_error(3, Backoff(initial=timedelta(days=40), max=timedelta(days=40)))
    assert error is not None
    assert "30 days" in error


def test_failure_record_and_minid() -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    try:
        raise ValueError("boom")
    except ValueError as exc:
        decision = after_failure(exc, 4, 3, Backoff())
    record = failure_record(message(4), decision, group="g", consumer="c", now=now)
    fields = record.to_fields()
    assert fields["dlq_error"] == "boom"
    assert fields["dlq_attempts"] == "4"
    assert fields["dlq_failed_at"] == "2026-01-02T00:00:00.000000Z"
    assert "test_failure_record_and_minid" in fields["dlq_traceback"]
    assert dlq_minid(None) == ""
    # The scripts subtract the retention from the server's clock: no client time involved.
    assert dlq_retention_ms(None) == ""
    assert dlq_retention_ms(timedelta(hours=1)) == "3600000"
    assert dlq_retention_ms(timedelta(seconds=-5)) == "0"
    assert dlq_minid(timedelta(days=1), now) == f"{int(now.timestamp() * 1000) - 86_400_000}-0"


def test_claims_are_sorted_by_previous_owner() -> None:
    owners = {"1-0": RETRY_CONSUMER, "2-0": "dead-worker", "3-0": "dead-worker"}
    claimed = sort_claimed(owners, ["1-0", "2-0"], ["3-0"])
    assert claimed.retries == {"1-0"}
    assert claimed.reclaimed == {"2-0"}
    assert claimed.lost == {"3-0"}


def test_config_takes_a_schedule_longer_than_the_claim_clock() -> None:
    ConsumerConfig(stream="s", group="g", max_retries=10, claim_min_idle=timedelta(seconds=30))
    with pytest.raises(ConfigError, match="30 days"):
        ConsumerConfig(
            stream="s", group="g", backoff=Backoff(max=timedelta(days=60)), max_retries=30
        )


def test_config_rejects_unknown_keys_and_the_reserved_consumer_name() -> None:
    with pytest.raises(ConfigError, match="batchsize"):
        ConsumerConfig(stream="s", group="g", batchsize=5)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="reserved"):
        ConsumerConfig(stream="s", group="g", consumer=RETRY_CONSUMER)
    # No DLQ of its own: the consumer writes where its client routes the stream.
    assert ConsumerConfig(stream="s", group="g").dlq_stream is None
    assert ConsumerConfig(stream="s", group="g", dlq_stream="dead").dlq_stream == "dead"
