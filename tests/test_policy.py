"""The consumer's decisions and the backoff schedule, without Redis."""

from datetime import UTC, datetime, timedelta

import pytest

from streamlab.backoff import Backoff, compute_backoff
from streamlab.consumer import ConsumerConfig
from streamlab.errors import ConfigError, DecodeError, Reject, Retry
from streamlab.events import StreamEvent, StreamMessage, encode_event
from streamlab.policy import (
    RETRY_CONSUMER,
    Action,
    after_failure,
    before_handler,
    dlq_minid,
    failure_record,
    max_delay,
    retry_idle_ms,
    sort_claimed,
)


def message(delivery_count: int = 1, **fields: bytes) -> StreamMessage:
    event = StreamEvent(event_type="push")
    raw = {k: v if isinstance(v, bytes) else v.encode() for k, v in encode_event(event).items()}
    return StreamMessage("s", "1-0", event, {**raw, **fields}, delivery_count)


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
    with pytest.raises(ValueError, match="start at 1"):
        compute_backoff(0)


def test_failures_retry_until_max_retries_then_dead_letter() -> None:
    actions = [after_failure(ValueError("x"), n, 3, Backoff()) for n in (1, 2, 3, 4)]
    assert [a.action for a in actions] == [Action.RETRY] * 3 + [Action.DEAD_LETTER]
    assert [a.delay for a in actions[:3]] == [0.0, 1.0, 2.0]
    assert actions[3].error_type == "ValueError"
    assert actions[3].message == "x"


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
    assert "payload" in decision.message
    assert "1-0" in decision.message


def test_before_handler_skips_replays_meant_for_another_group() -> None:
    assert before_handler(message(replay_group=b"other"), "g", 3).action is Action.SKIP
    assert before_handler(message(replay_group=b"g"), "g", 3).action is Action.HANDLE


def test_before_handler_dead_letters_messages_whose_consumers_keep_dying() -> None:
    assert before_handler(message(delivery_count=4), "g", 3).action is Action.HANDLE
    decision = before_handler(message(delivery_count=5), "g", 3)
    assert (decision.action, decision.error_type) == (Action.DEAD_LETTER, "ConsumerDied")


def test_retry_idle_makes_the_entry_due_after_its_delay() -> None:
    assert retry_idle_ms(0.0, timedelta(seconds=60)) == 60_000
    assert retry_idle_ms(2.0, timedelta(seconds=60)) == 58_000
    assert retry_idle_ms(90.0, timedelta(seconds=60)) == 0


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
    assert dlq_minid(timedelta(days=1), now) == f"{int(now.timestamp() * 1000) - 86_400_000}-0"


def test_claims_are_sorted_by_previous_owner() -> None:
    owners = {"1-0": RETRY_CONSUMER, "2-0": "dead-worker", "3-0": "dead-worker"}
    claimed = sort_claimed(owners, ["1-0", "2-0"], ["3-0"])
    assert claimed.retries == {"1-0"}
    assert claimed.reclaimed == {"2-0"}
    assert claimed.lost == {"3-0"}


def test_config_rejects_a_schedule_longer_than_the_claim_clock() -> None:
    with pytest.raises(ConfigError, match="claim_min_idle"):
        ConsumerConfig(stream="s", group="g", max_retries=10, claim_min_idle=timedelta(seconds=30))
    ConsumerConfig(stream="s", group="g", max_retries=10, claim_min_idle=timedelta(seconds=300))


def test_config_rejects_unknown_keys_and_the_reserved_consumer_name() -> None:
    with pytest.raises(ConfigError, match="batchsize"):
        ConsumerConfig(stream="s", group="g", batchsize=5)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="reserved"):
        ConsumerConfig(stream="s", group="g", consumer=RETRY_CONSUMER)
    assert ConsumerConfig(stream="s", group="g").dlq == "s_dlq"
    assert ConsumerConfig(stream="s", group="g", dlq_stream="dead").dlq == "dead"
