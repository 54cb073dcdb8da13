"""The consumer's decisions, without I/O: what to do with each message and when.

The sync `Consumer` (and the asyncio consumer to come) only move bytes to and from Redis
around these functions, so the rules below are tested without a server.

How retries work: a failed message stays pending in its group (nothing is lost if the worker
dies right then). Its due time goes to the group's sorted set (`streamlab.keys.retry_due_key`),
then it is handed to the placeholder consumer ``streamlab:retry`` with
``XCLAIM ... IDLE max(claim_min_idle - delay, 0) JUSTID``: it becomes visible to the query that
finds messages held by dead consumers (``XPENDING ... IDLE claim_min_idle``) when its backoff has
elapsed, or after ``claim_min_idle`` when the backoff is longer. A visible retry that is not due
yet is parked again (`sort_parked`), so a delay may exceed ``claim_min_idle`` by any amount.
The group's delivery counter is the attempt count (parking does not bump it), and other groups
on the stream never see the retry.
"""

from __future__ import annotations

import enum
import math
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from streamlab.backoff import Backoff, compute_backoff
from streamlab.errors import Reject, Retry
from streamlab.events import StreamMessage
from streamlab.records import Failure, ReplayMarker

__all__ = [
    "MAX_CLAIM_MIN_IDLE",
    "MAX_RETRY_DELAY",
    "RETRY_CONSUMER",
    "Action",
    "Claimed",
    "Decision",
    "Parked",
    "after_failure",
    "before_handler",
    "check_claim_min_idle",
    "dlq_minid",
    "dlq_retention_ms",
    "failure_record",
    "max_delay",
    "retry_due_ms",
    "retry_idle_ms",
    "schedule_error",
    "sort_claimed",
    "sort_parked",
]

RETRY_CONSUMER = "streamlab:retry"
TRACEBACK_LIMIT = 4000
# The longest a retry may wait (seconds): a longer `Retry` delay is cut to it, a longer
# schedule is refused by configuration.
MAX_RETRY_DELAY = 30 * 24 * 3600.0
# A parked retry due within this many ms is claimed rather than parked again: the claim clock
# (Redis' idle times) and the due times (the workers' clocks) agree to about a millisecond.
DUE_SLACK_MS = 10


class Action(enum.Enum):
    """What happens to a message."""

    HANDLE = "handle"
    ACK = "ack"
    SKIP = "skip"  # ack without handling: replayed for another group
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True, slots=True)
class Decision:
    """An action with its delay (for RETRY) or its failure (for DEAD_LETTER)."""

    action: Action
    delay: float = 0.0
    error: BaseException | None = None
    error_type: str = ""
    error_text: str = ""


HANDLE = Decision(Action.HANDLE)
SKIP = Decision(Action.SKIP)


def before_handler(msg: StreamMessage, group: str, max_retries: int) -> Decision:
    """Decide what to do with a message before its handler runs.

    Undecodable entries go to the DLQ at once (retrying cannot fix them). A message replayed
    for another group is skipped: only when it carries a complete `ReplayMarker` naming
    another group (a producer's ``replay_group`` field, or a partial marker, is an ordinary
    event). A message delivered more often than its attempts allow was
    held by consumers that died on it (a poison message that kills workers): dead-letter it.
    (`Consumer.process` calls it only when one of these can apply: keep the two in step.)
    """
    if msg.event is None:
        err = msg.decode_error
        return Decision(
            Action.DEAD_LETTER, error=err, error_type="DecodeError", error_text=str(err or "")
        )
    # Marker fields are no StreamEvent attribute, so a marked entry has them in ``extra``.
    if ReplayMarker.present(msg.event.extra):
        marker = ReplayMarker.from_fields(msg.fields)
        if marker is not None and marker.group and marker.group != group:
            return SKIP
    if msg.delivery_count > max_retries + 1:
        return Decision(
            Action.DEAD_LETTER,
            error_type="ConsumerDied",
            error_text=f"delivery {msg.delivery_count} is past the {max_retries + 1} attempts "
            "allowed: the consumers last holding it died or hung before settling it",
        )
    return HANDLE


def after_failure(
    error: BaseException | None, delivery_count: int, max_retries: int, backoff: Backoff
) -> Decision:
    """Retry with backoff, or dead-letter once ``max_retries`` retries have failed.

    Attempt ``n`` is delivery ``n``: after the first failure comes retry 1, and the message
    goes to the DLQ when attempt ``max_retries + 1`` fails. `Reject` dead-letters at once;
    `Retry` may carry its own delay.
    """
    error_type = type(error).__name__ if error is not None else "Nack"
    text = str(error) if error is not None else "negatively acknowledged"
    if isinstance(error, Reject) or delivery_count > max_retries:
        return Decision(Action.DEAD_LETTER, error=error, error_type=error_type, error_text=text)
    delay = compute_backoff(delivery_count, backoff)
    if isinstance(error, Retry) and error.delay is not None:
        delay = max(error.delay, 0.0)
    return Decision(Action.RETRY, delay=delay, error=error, error_type=error_type, error_text=text)


def max_delay(max_retries: int, backoff: Backoff) -> float:
    """The longest delay the schedule asks for over ``max_retries`` retries (jitter included)."""
    if max_retries < 1:
        return 0.0
    # The schedule never shrinks (multiplier >= 1, then capped), so the last retry waits longest.
    return compute_backoff(max_retries, backoff, rand=lambda: 1.0)


MAX_CLAIM_MIN_IDLE = timedelta(days=365)
"""The longest ``claim_min_idle``: Redis counts idle time from a delivery time it clamps to
1970, so an idle threshold of decades is never reached and a waiting retry never comes."""


def check_claim_min_idle(value: timedelta) -> timedelta:
    """``value`` when it is a usable ``claim_min_idle``, else `ValueError` saying why."""
    if value <= timedelta(0):
        raise ValueError(f"must be greater than 0 (got {value.total_seconds():g} s)")
    if value > MAX_CLAIM_MIN_IDLE:
        raise ValueError(
            f"must be at most {MAX_CLAIM_MIN_IDLE.days} days (got {value.days} days): Redis "
            "cannot measure idle times that long, so retries and reclaims would never come"
        )
    return value


def schedule_error(max_retries: int, backoff: Backoff) -> str | None:
    """Why a schedule is refused (its longest delay is past `MAX_RETRY_DELAY`), else None."""
    worst = max_delay(max_retries, backoff)
    if worst <= MAX_RETRY_DELAY:
        return None
    return (
        f"the backoff schedule asks for a {worst:g} s delay; the longest a retry may wait is "
        f"{MAX_RETRY_DELAY:g} s (30 days)"
    )


def retry_idle_ms(delay: float, claim_min_idle: timedelta) -> int:
    """The IDLE to park a retry with, so that the claim clock shows it after ``delay`` seconds.

    A delay longer than ``claim_min_idle`` gives 0: the retry shows after ``claim_min_idle``
    and is parked again until its due time (`sort_parked`).
    """
    threshold = int(claim_min_idle.total_seconds() * 1000)
    return max(threshold - int(_bounded(delay) * 1000), 0)


def _bounded(delay: float) -> float:
    if math.isnan(delay):
        return 0.0
    return min(max(delay, 0.0), MAX_RETRY_DELAY)


def retry_due_ms(delay: float, now_ms: int) -> int:
    """When a retry asked at ``now_ms`` (Unix ms) with ``delay`` seconds is due (Unix ms).

    Delays are cut to `MAX_RETRY_DELAY`; a negative one is due at once.
    """
    return now_ms + math.ceil(_bounded(delay) * 1000)


@dataclass(frozen=True, slots=True)
class Parked:
    """Waiting retries the claim clock showed: those due now, and the rest to park again
    (IDLE to set -> ids), with the seconds until the first of those is due."""

    due: tuple[str, ...]
    again: Mapping[int, tuple[str, ...]]
    soonest: float | None


def sort_parked(due_ms: Mapping[str, float | None], now_ms: int, claim_min_idle_ms: int) -> Parked:
    """Split waiting retries idle for ``claim_min_idle`` by their due times (Unix ms).

    A retry with no due time is due: the claim clock alone decides. (The due time is written
    before the message is parked, so a crash leaves at worst a due time without a parked
    message, which nothing reads; a row is missing only when pruned once overdue, or for a
    message parked by an older streamlab.) One due later is parked again with the IDLE that
    shows it at its due time, or after ``claim_min_idle`` when that is sooner.
    """
    due: list[str] = []
    again: dict[int, list[str]] = {}
    soonest: float | None = None
    for entry_id, at in due_ms.items():
        left = 0 if at is None else int(at) - now_ms
        if left <= DUE_SLACK_MS:
            due.append(entry_id)
            continue
        idle = max(claim_min_idle_ms - left, 0)
        again.setdefault(idle, []).append(entry_id)
        soonest = left / 1000 if soonest is None else min(soonest, left / 1000)
    return Parked(tuple(due), {k: tuple(v) for k, v in again.items()}, soonest)


def failure_record(
    msg: StreamMessage,
    decision: Decision,
    *,
    group: str,
    consumer: str,
    now: datetime | None = None,
    traceback_limit: int = TRACEBACK_LIMIT,
) -> Failure:
    """The failure fields of a DLQ entry (traceback bounded to its last ``traceback_limit``)."""
    trace = ""
    # A decode error's traceback points into streamlab, not at a bug of the user's: leave it out.
    error = decision.error
    if (
        error is not None
        and error.__traceback__ is not None
        and decision.error_type != "DecodeError"
    ):
        trace = "".join(traceback.format_exception(error))[-traceback_limit:]
    return Failure(
        error=decision.error_text,
        error_type=decision.error_type,
        traceback=trace,
        attempts=msg.delivery_count,
        source_stream=msg.stream,
        source_id=msg.id,
        group=group,
        consumer=consumer,
        failed_at=now or datetime.now(UTC),
    )


def dlq_minid(retention: timedelta | None, now: datetime | None = None) -> str:
    """The MINID that trims DLQ entries older than ``retention`` ('' when unbounded).

    ``now`` should be the server's time: the trims take it from the server (``TIME``), so
    that a client clock ahead of the server's cannot trim fresh dead letters."""
    if retention is None:
        return ""
    # In integer milliseconds: a retention longer than the time since 1970 trims nothing (a
    # negative MINID is an invalid id, which made every dead letter fail).
    now_ms = int((now or datetime.now(UTC)).timestamp() * 1000)
    cutoff = now_ms - retention // timedelta(milliseconds=1)
    return f"{cutoff}-0" if cutoff > 0 else ""


def dlq_retention_ms(retention: timedelta | None) -> str:
    """``retention`` as the milliseconds the trim scripts take ('' when unbounded).

    The scripts subtract it from the server's clock, never the worker's; a negative value
    counts as 0 there, so the entry just dead-lettered always stays."""
    if retention is None:
        return ""
    return str(max(int(retention.total_seconds() * 1000), 0))


@dataclass(frozen=True, slots=True)
class Claimed:
    """Bookkeeping of one claim: retries that came due, messages taken from other consumers,
    and pending entries that were gone from the stream (deleted or trimmed)."""

    retries: frozenset[str]
    reclaimed: frozenset[str]
    lost: frozenset[str]


def sort_claimed(
    owners: Mapping[str, str], claimed_ids: Iterable[str], gone_ids: Iterable[str]
) -> Claimed:
    """Split a claim by previous owner: ``streamlab:retry`` means a retry, else a reclaim."""
    got = set(claimed_ids)
    retries = frozenset(i for i in got if owners.get(i) == RETRY_CONSUMER)
    return Claimed(retries, frozenset(got - retries), frozenset(gone_ids))
