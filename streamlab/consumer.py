"""The consumer: read in a group, run a handler, ack, retry with backoff, reclaim, dead-letter.

All decisions live in `streamlab.policy` (no I/O); this module only talks to Redis around
them. Per batch there is one read and one pipelined write (acks, retries and dead letters
together), so the hot path costs two round trips however many messages a batch holds.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Self

import redis
from pydantic import (
    AliasChoices,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from streamlab import _args
from streamlab._config_model import ConfigModel, Count
from streamlab._lease import Interrupted, Reason, Watchdog
from streamlab._moves import dead_letter_tx
from streamlab._signals import signals_set
from streamlab.backoff import Backoff
from streamlab.client import (
    ClientLike,
    DurationArg,
    RawEntry,
    as_client,
    send_packed,
    translate_errors,
)
from streamlab.durations import Duration, PositiveDuration, format_duration
from streamlab.errors import ArgumentError, ConfigError, GroupNotFoundError, NotFoundError
from streamlab.events import StreamMessage, decode_entries, decode_message
from streamlab.keys import check_same_slot, check_start_id, is_cluster, retry_due_key
from streamlab.metrics import Metrics
from streamlab.policy import (
    RETRY_CONSUMER,
    TRACEBACK_LIMIT,
    Action,
    Decision,
    after_failure,
    before_handler,
    check_claim_min_idle,
    dlq_retention_ms,
    failure_record,
    retry_due_ms,
    retry_idle_ms,
    schedule_error,
    sort_claimed,
    sort_parked,
)
from streamlab.records import PendingEntry, claimed_ids, pending_entries
from streamlab.scripts import LUA_MAX_VALUES

__all__ = ["Consumer", "ConsumerConfig", "Handler", "RunStats", "default_consumer_name"]

Handler = Callable[[StreamMessage], object]
# A batch item: a decoded message, or a new entry as read (see `Consumer._read`).
Item = StreamMessage | RawEntry


def _item_id(item: Item) -> str:
    return item.id if isinstance(item, StreamMessage) else item[0].decode()


ACK = Decision(Action.ACK)
# New entries are decoded this many at a time, just ahead of their handlers (see `_messages`):
# runs of 12-32 were ~15% faster per message than one by one; 64 lost most of it again (more
# decoded events alive when the cyclic GC runs: it moves them to older generations).
_DECODE_AHEAD = 16
# How long one blocking read may last inside `run`, so that a stop request is seen promptly.
_POLL = 1.0
_MAX_OUTAGE_WAIT = 5.0
# Errors that a wait cures: the server restarting or unreachable, or out of memory; on a
# cluster, a failover (CLUSTERDOWN, MASTERDOWN, a slot not served yet) or a slot migration
# (TRYAGAIN) that outlasts the cluster client's own retries.
_TRANSIENT = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.OutOfMemoryError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.SlotNotCoveredError,
)
log = logging.getLogger("streamlab.consumer")
# How many XPENDING pages one claim may go through while it finds only retries to park again.
_CLAIM_PAGES = 10
# ARGV of lua/dead_letter.lua: group, id, owner, maxlen, retention ms, then the entry's fields.
_DL_HEAD = 5


def _fits_lua(args: Sequence[object]) -> bool:
    """Whether a dead letter's fields pass through Lua's unpack (see scripts.LUA_MAX_VALUES)."""
    return len(args) - _DL_HEAD <= LUA_MAX_VALUES


def _check_handler(handler: object) -> None:
    # Checked before any read: a handler that cannot be called would fail every message
    # until its retries are spent and the DLQ holds them all.
    if not callable(handler):
        raise TypeError(f"handler must be callable, not {type(handler).__name__}")


def _check_batch(batch: object) -> None:
    """`ArgumentError` unless ``batch`` is a sequence of `Item`s (as `process` takes them)."""
    if isinstance(batch, str | bytes) or not isinstance(batch, Sequence):
        raise ArgumentError(f"batch: expected a sequence of messages, got {batch!r:.80}")
    for i, item in enumerate(batch):
        raw = isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], bytes)
        if not (raw or isinstance(item, StreamMessage)):
            raise ArgumentError(
                f"batch[{i}]: expected a StreamMessage or a raw entry (id, fields), "
                f"got {type(item).__name__}"
            )


def default_consumer_name() -> str:
    """``<hostname>-<pid>``: unique per worker process, stable for its lifetime."""
    return f"{socket.gethostname()}-{os.getpid()}"


class ConsumerConfig(ConfigModel):
    """How a consumer reads, retries and dead-letters. Unknown keys are rejected.

    ``claim_min_idle`` is how long a message may sit with a dead or hung consumer before
    another consumer takes it over; backoff delays (up to 30 days) do not depend on it: a
    waiting retry is looked at once per ``claim_min_idle``. ``dlq_retention`` trims DLQ entries
    older than it (MINID) whenever a message is dead-lettered. The DLQ is where the client
    routes the stream's dead letters (`RedisStreamsClient.dlq_stream`: its ``dlq_names``, else
    ``<stream>_dlq``): ``dlq_stream`` None (the default) means that routing, and a `Consumer`'s
    own ``config`` names the stream it resolved to. A ``dlq_stream`` given must name the same
    stream (`ConfigError` otherwise), so that readers and replay never look elsewhere than
    where dead letters go.
    ``stream_maxlen`` is for producers writing to this stream
    (``add_to_stream(..., maxlen=config.stream_maxlen)``, or the client's ``stream_maxlen``;
    `StreamlabSettings.client` fills that in from the settings).

    ``handler_timeout`` (default None: no limit) interrupts a handler that runs longer and
    counts a `TimeoutError` failure (retried, then dead-lettered, like any failure).
    ``shutdown_grace`` is how long a running handler may go on after a stop request before
    it is interrupted and its message left pending. See `streamlab._lease` for how, and its
    limit: a handler blocked in C code outside the main thread stops only when it returns.
    Durations are `Duration`s (a `timedelta`, ``"5s"``, seconds or ISO 8601); each one but
    ``claim_min_idle`` and ``shutdown_grace`` must be greater than 0. ``dlq_stream`` must
    differ from ``stream`` and ``group_start_id`` is ``$``, ``0`` or a stream id. Counts
    (``batch_size``, ``max_retries``, ...) are whole numbers, never a bool. A bad value
    raises `ConfigError` naming the field.
    ``delete_idle_consumers``: consumers of the group holding no pending entry and idle
    (no read or claim) for longer than this are deleted, checked and deleted in one atomic
    step, so worker churn does not grow the consumer list; None keeps them all.

    A stream's section of the settings (``streams.<name>`` in YAML or ``STREAMLAB_*``) is this
    model: ``group`` is also read as ``consumer_group`` and ``stream_maxlen`` as
    ``max_length`` (the seed's keys), so a value is valid or invalid the same way everywhere.
    """

    stream: str = Field(min_length=1)
    group: str = Field(min_length=1, validation_alias=AliasChoices("group", "consumer_group"))
    consumer: str = Field(default_factory=default_consumer_name, min_length=1)
    block_duration: Duration = timedelta(seconds=5)
    batch_size: Count = Field(default=10, ge=1)
    max_retries: Count = Field(default=3, ge=0)
    backoff: Backoff = Field(default_factory=Backoff)
    claim_min_idle: Duration = timedelta(seconds=60)
    claim_interval: PositiveDuration = timedelta(milliseconds=100)
    # None: where the client routes the stream; a config cannot know that client, and a
    # guessed default would name a stream the consumer may never write.
    dlq_stream: str | None = Field(default=None, min_length=1)
    dlq_maxlen: Count | None = Field(default=None, ge=1)
    dlq_retention: PositiveDuration | None = None
    stream_maxlen: Count | None = Field(
        default=None, ge=1, validation_alias=AliasChoices("stream_maxlen", "max_length")
    )
    group_start_id: str = "0"
    create_group: bool = True
    traceback_limit: Count = Field(default=TRACEBACK_LIMIT, ge=0)
    handler_timeout: PositiveDuration | None = None
    shutdown_grace: Duration = timedelta(seconds=10)
    delete_idle_consumers: PositiveDuration | None = timedelta(hours=1)

    _claim_min_idle = field_validator("claim_min_idle")(check_claim_min_idle)

    @field_validator("block_duration")
    @classmethod
    def _block(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError(
                f"must be greater than 0 (got {format_duration(value)}; 0 would block forever)"
            )
        return value

    @field_validator("group_start_id")
    @classmethod
    def _start_id(cls, value: str) -> str:
        return check_start_id(value)

    @field_validator("dlq_stream")
    @classmethod
    def _not_the_stream(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and value == info.data.get("stream"):
            raise ValueError(
                f"the DLQ {value!r} is the stream itself, so every dead letter would be read "
                "again and dead-lettered again; name another stream"
            )
        return value

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.consumer == RETRY_CONSUMER:
            raise ValueError(f"consumer name {RETRY_CONSUMER!r} is reserved for waiting retries")
        error = schedule_error(self.max_retries, self.backoff)
        if error:
            raise ValueError(error)
        return self


@dataclass
class RunStats:
    """What one `Consumer.run` did.

    ``handled`` counts handler calls; ``failed`` those that raised. ``skipped`` counts entries
    acked without a handler (replayed for another group); ``dead_lettered`` includes entries
    that never reached a handler (undecodable, or past their attempts).
    """

    handled: int = 0
    acked: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    reclaimed: int = 0
    lost: int = 0
    skipped: int = 0
    duration: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)


class Consumer:
    """A consumer in a group; see `ConsumerConfig` and `run`.

    ``client`` is a `RedisStreamsClient` (a plain redis-py client is wrapped). ``metrics``
    defaults to the client's hook. Anything else than these types is a `TypeError`.
    """

    def __init__(
        self,
        client: ClientLike,
        config: ConsumerConfig,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.client = as_client(client)
        if not isinstance(config, ConsumerConfig):
            raise TypeError(f"config must be a ConsumerConfig, not {type(config).__name__}")
        if metrics is not None and not isinstance(metrics, Metrics):
            raise TypeError(f"metrics must be a streamlab Metrics, not {type(metrics).__name__}")
        self.dlq_stream = self._routed_dlq(config)
        # The config this consumer holds names the DLQ it really writes.
        self.config = (
            config
            if config.dlq_stream == self.dlq_stream
            else config.model_copy(update={"dlq_stream": self.dlq_stream})
        )
        self.redis = self.client.redis
        self.metrics: Metrics = metrics or self.client.metrics
        # Due times of this group's waiting retries (see `streamlab.policy`).
        self._due_key = retry_due_key(config.stream, config.group)
        if is_cluster(self.redis):
            check_same_slot(config.stream, self.dlq_stream, self._due_key)
        self.stats = RunStats()
        self._in_hand: dict[str, StreamMessage] = {}
        # When each message in hand reached us: a retry is handed over only if nobody has
        # been given the message since (see _settle). Per id for messages handed out by
        # `read_messages` and those renewed; a batch `run` reads has one stamp, its read's.
        self._received: dict[str, float] = {}
        # Ids in hand that were claimed (delivered before): only those may have a due-time row.
        self._redelivered: set[str] = set()
        self._next_prune = 0.0
        self._next_claim = 0.0
        # A restarted consumer first takes back what it held under the same name, in id
        # order from this cursor (see _take_back_own).
        self._own_first = True
        self._own_after = "-"
        self._next_prune = 0.0
        self._retry_due = float("inf")
        self._min_idle_ms = int(config.claim_min_idle.total_seconds() * 1000)
        self._labels = (config.stream, config.group)
        self._dl_keys = [config.stream, self.dlq_stream]
        self._cluster = is_cluster(self.redis)
        # Set while `run` runs: renews the batch in hand, enforces the time limits.
        self._watchdog: Watchdog | None = None

    def _routed_dlq(self, config: ConsumerConfig) -> str:
        """The client's DLQ for the stream: the routing is the client's, set when it was
        built, so that `read_dlq`, the exporters and replay read where this consumer writes.
        A config naming another DLQ is a mistake, said at once; one naming none takes it."""
        routed = self.client.dlq_stream(config.stream)
        if routed == config.stream:
            raise ConfigError(
                f"stream {config.stream!r}: the client's dlq_names name the stream itself as "
                "its DLQ, so every dead letter would be read again; name another stream"
            )
        if config.dlq_stream is not None and config.dlq_stream != routed:
            raise ConfigError(
                f"stream {config.stream!r}: ConsumerConfig.dlq_stream is {config.dlq_stream!r} "
                f"but the client sends its dead letters to {routed!r}; build the client with "
                f"RedisStreamsClient(r, dlq_names={{{config.stream!r}: {config.dlq_stream!r}}})"
            )
        return routed

    # -- reading -----------------------------------------------------------------------------

    def read_messages(self, *, block: DurationArg | None = None) -> list[StreamMessage]:
        """Up to ``batch_size`` messages: retries now due, messages reclaimed from dead
        consumers, then new ones (waiting up to ``block``, a `Duration` like ``"2s"`` or
        seconds; default ``block_duration``; 0 does not wait).

        Settle each with `ack_message` or `nack_message`. Entries that need no handler are
        settled here, as `run` settles them, and not returned: undecodable ones and those whose
        consumers kept dying go to the DLQ, replays meant for another group are acked.
        """
        cfg = self.config
        wait = cfg.block_duration if block is None else _args.duration("block", block)
        batch: list[StreamMessage] = []
        settled: list[tuple[StreamMessage | str, Decision]] = []
        items = self._read(wait)
        received = time.monotonic()
        self._received.update((_item_id(item), received) for item in items)
        for msg in self._messages(items):
            decision = before_handler(msg, cfg.group, cfg.max_retries)
            if decision.action is Action.HANDLE:
                batch.append(msg)
            else:
                settled.append((msg, decision))
        self._settle(settled)
        self._in_hand.update((m.id, m) for m in batch)
        return batch

    def _read(self, block: DurationArg | None) -> list[Item]:
        """Claimed messages (decoded: they carry their delivery counts), then new entries,
        left raw for `_messages` to decode when their turn comes. The caller stamps when they
        were received (see ``_received``)."""
        batch: list[Item] = []
        if self._own_first:
            taken = self._take_back_own()
            self._redelivered.update(m.id for m in taken)
            batch += taken
        if len(batch) < self.config.batch_size and time.monotonic() >= self._next_claim:
            claimed = self._claim_due()
            self._redelivered.update(m.id for m in claimed)
            batch += claimed
        room = self.config.batch_size - len(batch)
        if room > 0:
            cfg = self.config
            batch += self.client.read_entries(
                cfg.stream, cfg.group, cfg.consumer, room, None if batch else block
            )
        return batch

    def _messages(self, batch: Sequence[Item]) -> Iterator[StreamMessage]:
        """The batch's messages in order. New entries are decoded `_DECODE_AHEAD` at a time
        (`decode_entries` decodes a run of entries faster than one by one) as their turn
        comes: a stop wastes at most one such run, and few decoded events are alive at once."""
        stream, i, n = self.config.stream, 0, len(batch)
        while i < n:
            item = batch[i]
            if isinstance(item, StreamMessage):
                yield item
                i += 1
                continue
            j = i + 1
            while j < n and j - i < _DECODE_AHEAD and not isinstance(batch[j], StreamMessage):
                j += 1
            yield from decode_entries(stream, batch[i:j])  # type: ignore[arg-type]
            i = j

    def _claim_due(self) -> list[StreamMessage]:
        """Retries now due and messages of dead consumers; retries idle for
        ``claim_min_idle`` but not due yet are parked again, and the next page looked at."""
        cfg = self.config
        self._prune_due_times()
        start = "-"
        for _ in range(_CLAIM_PAGES):
            rows = self._pending(start=start, idle=self._min_idle_ms, count=cfg.batch_size)
            if len(rows) < cfg.batch_size:
                self._next_claim = time.monotonic() + cfg.claim_interval.total_seconds()
            batch, parked_again = self._claim_rows(rows) if rows else ([], 0)
            if batch or not parked_again or len(rows) < cfg.batch_size:
                return batch
            start = f"({rows[-1].id}"
        return []

    def _claim_rows(self, rows: list[PendingEntry]) -> tuple[list[StreamMessage], int]:
        """Claim ``rows`` (idle for ``claim_min_idle``), parking again the retries not due;
        return the claimed messages and how many were parked again."""
        cfg = self.config
        owners = {row.id: row.consumer for row in rows}
        deliveries = {row.id: row.deliveries for row in rows}
        waiting = [row.id for row in rows if row.consumer == RETRY_CONSUMER]
        due_at = self._due_times(waiting)
        parked = sort_parked(
            {i: due_at.get(i) for i in waiting}, int(time.time() * 1000), self._min_idle_ms
        )
        again = {i for ids in parked.again.values() for i in ids}
        ids: list[Any] = [i for i in owners if i not in again]
        pipe = self.redis.pipeline(transaction=False)
        for idle, wait_ids in parked.again.items():
            # JUSTID: parking again is no delivery, so the attempt count stays exact.
            pipe.xclaim(
                cfg.stream,
                cfg.group,
                RETRY_CONSUMER,
                self._min_idle_ms,
                list(wait_ids),
                idle=idle,
                justid=True,
            )
        if ids:
            pipe.xclaim(cfg.stream, cfg.group, cfg.consumer, self._min_idle_ms, ids)
        with translate_errors(cfg.stream, cfg.group):
            replies = pipe.execute()
        entries: list[Any] = replies[-1] if ids else []
        still_waiting = {i for reply in replies[: len(parked.again)] for i in claimed_ids(reply)}
        if parked.soonest is not None:
            self._retry_due = min(self._retry_due, time.monotonic() + parked.soonest)
        batch = [
            decode_message(cfg.stream, eid, raw, deliveries.get(eid.decode(), 0) + 1)
            for eid, raw in entries
            if raw is not None
        ]
        missing = set(owners) - {m.id for m in batch} - still_waiting
        claimed = sort_claimed(owners, (m.id for m in batch), self._gone(missing))
        if claimed.reclaimed:
            self.stats.reclaimed += len(claimed.reclaimed)
            self.metrics.reclaimed(*self._labels, len(claimed.reclaimed))
            log.info(
                "reclaimed %d messages of %s from dead or stuck consumers",
                len(claimed.reclaimed), cfg.stream,
                extra={"stream": cfg.stream, "group": cfg.group, "consumer": cfg.consumer,
                       "entry_ids": sorted(claimed.reclaimed)},
            )  # fmt: skip
        if claimed.lost:
            self.stats.lost += len(claimed.lost)
            self.metrics.lost(*self._labels, len(claimed.lost))
            with translate_errors(cfg.stream, cfg.group):
                self.redis.zrem(self._due_key, *claimed.lost)
        return batch, len(still_waiting)

    def _due_times(self, ids: list[str]) -> dict[str, float]:
        """The due times (Unix ms) of those of ``ids`` that have one."""
        if not ids:
            return {}
        with translate_errors(self.config.stream, self.config.group):
            scores = self.redis.zmscore(self._due_key, ids)
        return {i: at for i, at in zip(ids, scores, strict=True) if at is not None}

    def _prune_due_times(self) -> None:
        """Drop due-time rows overdue by ``claim_min_idle``, once per ``claim_min_idle``.

        Rows of settled entries are removed when they are settled; this catches the rest (an
        ack by someone else, a worker dying between its ack and the row's removal). A row is
        never pruned by whether its entry is pending: between that check and the removal the
        entry may be parked again with a new row. By score it is safe: an overdue row and no
        row mean the same (due once the claim clock shows it), and a row being written has a
        due time at or after its writer's now.
        """
        now = time.monotonic()
        if now < self._next_prune:
            return
        self._next_prune = now + max(self._min_idle_ms / 1000, 1.0)
        cutoff = int(time.time() * 1000) - self._min_idle_ms
        with translate_errors(self.config.stream, self.config.group):
            self.redis.zremrangebyscore(self._due_key, "-inf", f"({cutoff}")

    def _take_back_own(self) -> list[StreamMessage]:
        """This consumer's own pending entries, left by a previous process of the same name:
        taken back first (as XREADGROUP with id 0 would, but with their delivery counts).

        In id order, after those already taken back (which may be in hand): while a batch is
        filled with these, nothing else is read, so every entry past the cursor is an old one.
        XCLAIM's min-idle (just under the youngest idle seen) skips an entry that another
        consumer took over between the XPENDING and the XCLAIM.
        """
        cfg = self.config
        rows = self._pending(start=self._own_after, consumer=cfg.consumer, count=cfg.batch_size)
        if len(rows) < cfg.batch_size:
            self._own_first = False
        if not rows:
            return []
        self._own_after = f"({rows[-1].id}"
        deliveries = {row.id: row.deliveries for row in rows}
        min_idle = max(min(row.idle_ms for row in rows) - 1, 0)
        ids: list[Any] = list(deliveries)
        with translate_errors(cfg.stream, cfg.group):
            entries: list[Any] = self.redis.xclaim(
                cfg.stream, cfg.group, cfg.consumer, min_idle, ids
            )
        batch = [
            decode_message(cfg.stream, eid, raw, deliveries.get(eid.decode(), 0) + 1)
            for eid, raw in entries
            if raw is not None
        ]
        gone = self._gone(set(deliveries) - {m.id for m in batch})
        if gone:
            self.stats.lost += len(gone)
            self.metrics.lost(*self._labels, len(gone))
        return batch

    def _prune_idle_consumers(self) -> None:
        """Delete idle consumers that hold nothing (see ``delete_idle_consumers``), at most
        once per that period; a failure (out of memory, no right) only postpones it."""
        limit = self.config.delete_idle_consumers
        if limit is None or time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + limit.total_seconds()
        cfg = self.config
        try:
            deleted = self.client.scripts.prune_consumers(
                keys=[cfg.stream],
                args=[cfg.group, int(limit.total_seconds() * 1000), cfg.consumer, 100],
            )
        except redis.ResponseError as exc:
            log.debug("consumer pruning skipped: %s", exc)
            return
        if deleted:
            log.info("deleted %d idle consumers of group %r", len(deleted), cfg.group)

    def _pending(
        self,
        *,
        start: str = "-",
        end: str = "+",
        count: int = 100,
        consumer: str | None = None,
        idle: int | None = None,
    ) -> list[PendingEntry]:
        cfg = self.config
        with translate_errors(cfg.stream, cfg.group):
            return pending_entries(
                self.redis.xpending_range(cfg.stream, cfg.group, start, end, count, consumer, idle)
            )

    def _gone(self, ids: set[str]) -> list[str]:
        """Which of ``ids`` are no longer in the stream (deleted or trimmed while pending).

        XCLAIM drops such entries from the pending list; the others were claimed by another
        consumer or acked meanwhile, which is no loss.
        """
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        ordered = sorted(ids)
        for entry_id in ordered:
            pipe.xrange(self.config.stream, entry_id, entry_id, count=1)
        return [i for i, found in zip(ordered, pipe.execute(), strict=True) if not found]

    # -- settling ----------------------------------------------------------------------------

    def ack_message(self, message_id: str) -> int:
        """Acknowledge a message handled outside `run`; return how many were acked: 1, or 0
        when it was not pending (acked already, taken over, or no such entry), as
        `RedisStreamsClient.ack_message` does. A ``message_id`` that is no stream id is an
        `ArgumentError`."""
        message_id = _args.entry_id("message_id", message_id)
        self._in_hand.pop(message_id, None)
        return self._settle([(message_id, ACK)]).acked

    def nack_message(self, message_id: str, error: BaseException | None = None) -> Action | None:
        """Report a failed message: it is retried after its backoff, or dead-lettered when its
        retries are spent.

        Returns the action taken, RETRY or DEAD_LETTER; None when nothing was done because
        the entry is no longer this consumer's (another consumer took it over meanwhile).
        ``error`` is the exception the handling raised (None: a failure without one). An id
        that is no stream id is an `ArgumentError`; one not in the stream (deleted, trimmed,
        never there) a `NotFoundError` naming it and the stream, and nothing is done.
        """
        message_id = _args.entry_id("message_id", message_id)
        if error is not None and not isinstance(error, BaseException):
            raise TypeError(f"error must be an exception or None, not {type(error).__name__}")
        msg = self._in_hand.pop(message_id, None) or self._fetch(message_id)
        decision = self._after_failure(error, msg)
        done = self._settle([(msg, decision)])
        if not (done.dead_lettered or done.retried):
            return None
        return decision.action

    def _fetch(self, message_id: str) -> StreamMessage:
        cfg = self.config
        rows = self._pending(start=message_id, end=message_id, count=1)
        count = rows[0].deliveries if rows else 1
        msg = self.client.message(cfg.stream, message_id, count)
        if msg is None:
            raise NotFoundError(f"entry {message_id} is not in stream {cfg.stream!r}")
        return msg

    def _settle(
        self,
        outcomes: Sequence[tuple[StreamMessage | str, Decision]],
        acked: Sequence[str] = (),
        received: float | None = None,
    ) -> RunStats:
        """Write the outcomes of a batch in one pipelined round trip; return what it did.

        ``acked`` are more ids to ack; ``received`` when the batch was read, for messages
        with no stamp of their own in ``_received``.
        """
        cfg = self.config
        done = RunStats()
        acks = list(acked)
        stamps, redelivered = self._received, self._redelivered
        settled = [entry_id for entry_id in acked if entry_id in redelivered] if redelivered else []
        # (IDLE to set, min idle it must have) -> ids; see retry_idle_ms for the first.
        retries: dict[tuple[int, int], list[str]] = defaultdict(list)
        dead: list[StreamMessage] = []
        # Sent in this order: the dead letters' script calls, acks, due times, retries.
        commands: list[tuple[Any, ...]] = []
        apart: list[list[bytes | str | int]] = []
        # Due-time rows to write (retries) and to remove (redelivered entries settled for good).
        due_at: dict[str, int] = {}
        now = time.monotonic()
        now_ms = int(time.time() * 1000)
        for msg, decision in outcomes:
            entry_id = msg if isinstance(msg, str) else msg.id
            stamp = stamps.get(entry_id, received)
            action = decision.action
            if action is not Action.RETRY and entry_id in redelivered:
                settled.append(entry_id)
            if action is Action.ACK or action is Action.SKIP:
                acks.append(entry_id)
                done.skipped += action is Action.SKIP
            elif action is Action.RETRY:
                due_at[entry_id] = retry_due_ms(decision.delay, now_ms)
                # XCLAIM's min-idle makes the hand-over fail when another consumer took the
                # message over meanwhile (its delivery is younger than ours): it is theirs now.
                held_ms = 0 if stamp is None else max(int((now - stamp) * 1000) - 1, 0)
                idle = retry_idle_ms(decision.delay, cfg.claim_min_idle)
                retries[idle, held_ms].append(entry_id)
            elif isinstance(msg, StreamMessage):
                dead.append(msg)
                self._queue_dead_letter(commands, msg, decision, apart)
        if acks:
            commands.append(("XACK", cfg.stream, cfg.group, *acks))
        self._queue_due_times(commands, settled, due_at)
        for (idle, held_ms), ids in retries.items():
            # JUSTID: the hand-over is no delivery, so the attempt count stays exact.
            claim = ("XCLAIM", cfg.stream, cfg.group, RETRY_CONSUMER, held_ms, *ids)
            commands.append((*claim, "IDLE", idle, "JUSTID"))
        if not (acks or retries or dead):
            return done
        with translate_errors(cfg.stream, cfg.group):
            replies = self._send(commands) if commands else []
            # Replies in the order done.dead_lettered counts them: pipelined ones come first.
            replies[len(dead) - len(apart) : len(dead) - len(apart)] = [
                self._dead_letter_apart(args) for args in apart
            ]
        if retries:
            # Stamped after the XCLAIMs ran: a stamp taken before could fall a millisecond
            # short of Redis' due time, and a claim that finds nothing waits a whole poll.
            soonest = (self._min_idle_ms - max(idle for idle, _ in retries)) / 1000
            self._retry_due = min(self._retry_due, time.monotonic() + soonest)
        done.dead_lettered = sum(1 for r in replies[: len(dead)] if r)
        done.acked = max(int(replies[len(dead)]) - done.skipped, 0) if acks else 0
        done.retried = sum(len(r) for r in replies[len(replies) - len(retries) :])
        self._forget(acked, outcomes)
        if log.isEnabledFor(logging.INFO):
            self._log_settled(dead, replies[: len(dead)], due_at)
        self._count(done)
        return done

    def _forget(
        self, acked: Sequence[str], outcomes: Sequence[tuple[StreamMessage | str, Decision]]
    ) -> None:
        """Drop the stamps and redelivered marks of settled messages (after the settling
        succeeded: settling again after an error needs them)."""
        stamps, redelivered = self._received, self._redelivered
        if not (stamps or redelivered):
            return  # `run`'s usual case: nothing kept per message
        ids = [*acked, *(e if isinstance(e, str) else e.id for e, _ in outcomes)]
        for entry_id in ids:
            stamps.pop(entry_id, None)
        redelivered.difference_update(ids)

    def _log_settled(
        self, dead: list[StreamMessage], new_ids: list[Any], due: dict[str, int]
    ) -> None:
        """One structured line per dead letter (INFO) and per retry scheduled (DEBUG)."""
        cfg = self.config
        where = {"stream": cfg.stream, "group": cfg.group, "consumer": cfg.consumer}
        for msg, new_id in zip(dead, new_ids, strict=True):
            if new_id:
                dlq_id = new_id.decode() if isinstance(new_id, bytes) else str(new_id)
                log.info(
                    "dead-lettered %s to %s as %s after %d deliveries",
                    msg.id, self.dlq_stream, dlq_id, msg.delivery_count,
                    extra={**where, "entry_id": msg.id, "dlq": self.dlq_stream,
                           "dlq_id": dlq_id, "attempts": msg.delivery_count},
                )  # fmt: skip
        if log.isEnabledFor(logging.DEBUG):
            for entry_id, due_ms in due.items():
                log.debug(
                    "retry of %s due in %d ms", entry_id, due_ms - int(time.time() * 1000),
                    extra={**where, "entry_id": entry_id, "due_ms": due_ms},
                )  # fmt: skip

    def _send(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """A batch's settling commands in one round trip, replies raw; the first error reply
        is raised once all have been read, as a pipeline does. A plain client packs them with
        hiredis (`send_packed`: redis-py's `Pipeline` packing a batch's 500 ack ids in Python
        cost about 5% of a message's time), a dead letter refused with NOSCRIPT sent again
        once its script is loaded; a cluster client pipelines them (no script calls then)."""
        if self._cluster:
            pipe = self.redis.pipeline(transaction=False)
            for command in commands:
                # JUSTID's reply is ids, which redis-py's XCLAIM callback parses only if told.
                pipe.execute_command(
                    *command, **({"parse_justid": True} if command[0] == "XCLAIM" else {})
                )
            replies: list[Any] = pipe.execute()
            return replies
        script = self.client.scripts.dead_letter
        return send_packed(self.redis, commands, script, raise_on_error=True)

    def _queue_due_times(
        self, commands: list[tuple[Any, ...]], settled: list[str], due_at: dict[str, int]
    ) -> None:
        """Queue a batch's due-time writes: after its acks, before its retries are parked.

        The removal of settled entries' rows follows the acks (a dead letter made apart runs
        after the pipeline, but a row of an entry in hand is never read, so removing it first
        is harmless if the dead letter fails). A retry's due time precedes its parking: a crash
        between the two leaves the entry in hand, reclaimed from this consumer after
        ``claim_min_idle``, and the row is not read.
        """
        if settled:
            commands.append(("ZREM", self._due_key, *settled))
        if due_at:
            commands.append(
                ("ZADD", self._due_key, *(x for item in due_at.items() for x in item[::-1]))
            )

    def _settle_retrying(
        self,
        outcomes: Sequence[tuple[StreamMessage | str, Decision]],
        acked: Sequence[str] = (),
        received: float | None = None,
    ) -> None:
        """`_settle`, retried with backoff while the server is unreachable or out of memory.

        Settling again is safe: XACK is idempotent, a retry hand-over and a dead letter both
        check that the entry is still this consumer's. After ``claim_min_idle`` other consumers
        may take the entries over, so the wait stops there and the error is raised.
        """
        deadline = time.monotonic() + self.config.claim_min_idle.total_seconds()
        wait = 0.1
        while True:
            try:
                self._settle(outcomes, acked, received)
                return
            except _TRANSIENT as exc:
                if time.monotonic() + wait > deadline:
                    raise
                log.warning("settling failed (%s); retrying in %.1f s", type(exc).__name__, wait)
                time.sleep(wait)
                wait = min(wait * 2, _MAX_OUTAGE_WAIT)

    def _queue_dead_letter(
        self,
        commands: list[tuple[Any, ...]],
        msg: StreamMessage,
        decision: Decision,
        apart: list[list[bytes | str | int]],
    ) -> None:
        """Queue a dead letter's script call on ``commands``, or add its arguments to
        ``apart``."""
        args = self._dead_letter_args(msg, decision)
        if _fits_lua(args) and not self._cluster:
            sha = self.client.scripts.dead_letter.sha
            commands.append(("EVALSHA", sha, len(self._dl_keys), *self._dl_keys, *args))
        else:
            # Too large for Lua, or a cluster pipeline (which refuses EVALSHA): after the
            # pipeline, one by one.
            apart.append(args)

    def _dead_letter_args(self, msg: StreamMessage, decision: Decision) -> list[bytes | str | int]:
        """ARGV of ``lua/dead_letter.lua``: the checks, then the DLQ entry's fields."""
        cfg = self.config
        record = failure_record(
            msg,
            decision,
            group=cfg.group,
            consumer=cfg.consumer,
            traceback_limit=cfg.traceback_limit,
        )
        # Names back to their exact bytes: a name that is not UTF-8 was decoded with
        # surrogate escapes, which redis-py cannot encode.
        fields: dict[bytes, bytes | str] = {
            name.encode("utf-8", "surrogateescape"): value for name, value in msg.fields.items()
        }
        fields.update((name.encode(), value) for name, value in record.to_fields().items())
        args: list[bytes | str | int] = [
            cfg.group,
            msg.id,
            cfg.consumer,
            cfg.dlq_maxlen or 0,
            dlq_retention_ms(cfg.dlq_retention),
        ]
        for name, value in fields.items():
            args += (name, value)
        return args

    def _dead_letter_apart(self, args: list[bytes | str | int]) -> Any:
        """Dead-letter one entry outside the pipeline: by script on a cluster, and with
        WATCH/MULTI when the entry has too many fields for Lua."""
        if _fits_lua(args):
            return self.client.scripts.dead_letter(keys=self._dl_keys, args=args)
        return dead_letter_tx(self.redis, self._dl_keys, args)

    def _count(self, done: RunStats) -> None:
        stats = self.stats
        stats.acked += done.acked
        stats.skipped += done.skipped
        stats.retried += done.retried
        stats.dead_lettered += done.dead_lettered
        if done.acked:
            self.metrics.consumed(*self._labels, done.acked)
        if done.retried:
            self.metrics.retried(*self._labels, done.retried)
        if done.dead_lettered:
            self.metrics.dead_lettered(*self._labels, done.dead_lettered)

    # -- the loop ----------------------------------------------------------------------------

    def process(self, batch: Sequence[Item], handler: Handler) -> None:
        """Run ``handler`` on each message of ``batch`` and settle them all in one round trip.

        Raw entries are decoded just before their handler runs, and only the ids of handled
        messages are kept: a batch's payloads do not pile up until it is settled, which
        spares the garbage collector most of its work on the hot path. The handler durations
        reach the metrics once per batch.

        If the handler raises a BaseException that is not an Exception (KeyboardInterrupt,
        SystemExit), what was already decided is settled and the rest stays pending, to be
        reclaimed later: nothing done is left unacknowledged and nothing undone is lost.
        """
        _check_handler(handler)
        _check_batch(batch)
        self._process(batch, handler, None)

    def _process(self, batch: Sequence[Item], handler: Handler, received: float | None) -> None:
        """`process`; ``received`` is when `run` read the batch, the stamp of its messages
        that have none of their own in ``_received``."""
        cfg = self.config
        # Messages the handler acked, by id (the common case, kept apart from the others'
        # outcomes: nothing else about them is needed to settle them).
        acked: list[str] = []
        outcomes: list[tuple[StreamMessage | str, Decision]] = []
        durations: list[float] = []
        attempts = cfg.max_retries + 1
        dog = self._watchdog
        if dog is not None:
            dog.hold(batch)
        try:
            for msg in self._messages(batch):
                if dog is not None and dog.grace_over():
                    break  # stopping: the rest stays pending, untouched
                event = msg.event
                # `before_handler` has nothing to say of a decoded event without extra fields
                # (no replay marker) delivered no more often than its attempts allow (keep
                # this in step with its rules).
                if event is None or event.extra or msg.delivery_count > attempts:
                    decision = before_handler(msg, cfg.group, cfg.max_retries)
                    if decision.action is not Action.HANDLE:
                        outcomes.append((msg, decision))
                        continue
                handled = self._handle(msg, handler, durations)
                if handled is ACK:
                    acked.append(msg.id)
                elif handled is None:
                    break  # interrupted at shutdown: left pending
                else:
                    outcomes.append((msg, handled))
        finally:
            if dog is not None:
                # Renewed messages were last given to us then (see _settle's retry hand-over).
                self._received.update(dog.release())
            self.stats.handled += len(durations)
            self.metrics.observe_many(*self._labels, durations)
            failed = len(durations) - len(acked)
            if failed:
                self.stats.failed += failed
                self.metrics.failed(*self._labels, failed)
            for _, decision in outcomes:
                if decision.error_type:
                    errors = self.stats.errors
                    errors[decision.error_type] = errors.get(decision.error_type, 0) + 1
            self._settle_retrying(outcomes, acked, received)

    def _after_failure(self, error: BaseException | None, msg: StreamMessage) -> Decision:
        cfg = self.config
        return after_failure(error, msg.delivery_count, cfg.max_retries, cfg.backoff)

    def _handle(
        self, msg: StreamMessage, handler: Handler, durations: list[float]
    ) -> Decision | None:
        """The handler's outcome, its duration appended to ``durations``; None when it was
        interrupted by a shutdown (no duration then: the call did not end)."""
        dog = self._watchdog
        # One clock for the watchdog and the duration.
        started = time.monotonic()
        try:
            if dog is None:
                handler(msg)
            else:
                dog.arm(started)
                try:
                    handler(msg)
                finally:
                    dog.disarm()
        except Interrupted:
            assert dog is not None
            if dog.reason is Reason.SHUTDOWN:
                return None
            decision = self._after_failure(self._timed_out(), msg)
        except Exception as exc:
            decision = self._after_failure(exc, msg)
        else:
            decision = ACK
        durations.append(time.monotonic() - started)
        return decision

    def _timed_out(self) -> TimeoutError:
        limit = self.config.handler_timeout
        assert limit is not None
        return TimeoutError(f"handler ran past handler_timeout ({limit.total_seconds():g} s)")

    def run(
        self,
        handler: Handler,
        *,
        burst: bool = False,
        handle_signals: bool = True,
        stop_event: threading.Event | None = None,
    ) -> RunStats:
        """Consume until stopped; return what this run did.

        The handler receives each `StreamMessage`; returning acks it, raising retries it (or
        dead-letters it once its retries are spent; `Reject` at once, `Retry(delay=...)` with its
        own delay). SIGTERM and SIGINT (when ``handle_signals``) or ``stop_event`` finish the
        messages in hand, settle them, and stop; a handler still running ``shutdown_grace``
        after the request is interrupted, and what is left of its batch stays pending (neither
        acked nor dead-lettered) for another consumer. While a batch is handled its messages are
        renewed, so no other consumer reclaims them. ``burst=True`` returns once the stream is
        drained and no retry is waiting, which suits tests, notebooks and cron jobs.
        """
        _check_handler(handler)
        if stop_event is not None and not isinstance(stop_event, threading.Event):
            raise TypeError(
                f"stop_event must be a threading.Event, not {type(stop_event).__name__}"
            )
        stop = stop_event or threading.Event()
        self.stats = RunStats()
        self._own_first, self._own_after = True, "-"
        started = time.monotonic()
        cfg = self.config
        signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
        with signals_set(stop, *signals), self._watching(stop, handle_signals):
            self.metrics.watch(self.client, cfg.stream)
            outage = 0.0
            group_ready = not cfg.create_group
            while not stop.is_set():
                try:
                    if not group_ready:
                        # Inside the loop: a server that is down at start is waited for.
                        self.client.ensure_group(cfg.stream, cfg.group, cfg.group_start_id)
                        group_ready = True
                    if not self._step(handler, burst):
                        break
                    outage = 0.0
                except GroupNotFoundError:
                    if not cfg.create_group:
                        raise
                    # The group or the stream was deleted (XGROUP DESTROY, DEL, a restart
                    # without persistence): what it held is gone; recreate it and go on.
                    log.warning(
                        "group %r of stream %r is gone; creating it again", cfg.group, cfg.stream
                    )
                    group_ready = False
                except redis.AuthenticationError:
                    # A wrong user or password (a ConnectionError to redis-py) is not an
                    # outage: waiting would hang the worker for ever, silently.
                    raise
                except _TRANSIENT as exc:
                    # Redis restarting, a dropped connection or a full server: whatever was in
                    # hand stays pending and is claimed again, so waiting loses nothing.
                    outage = min(max(outage * 2, 0.1), _MAX_OUTAGE_WAIT)
                    log.warning(
                        "redis unavailable (%s); retrying in %.1f s", type(exc).__name__, outage
                    )
                    stop.wait(outage)
        self.stats.duration = time.monotonic() - started
        return self.stats

    @contextmanager
    def _watching(self, stop: threading.Event, handle_signals: bool) -> Iterator[None]:
        cfg = self.config
        timeout = cfg.handler_timeout
        self._watchdog = Watchdog(
            self.redis,
            cfg.stream,
            cfg.group,
            cfg.consumer,
            claim_min_idle=cfg.claim_min_idle.total_seconds(),
            handler_timeout=None if timeout is None else timeout.total_seconds(),
            shutdown_grace=cfg.shutdown_grace.total_seconds(),
            stop=stop,
            use_signal=handle_signals,
        ).start()
        try:
            yield
        finally:
            self._watchdog.close()
            self._watchdog = None

    def _step(self, handler: Handler, burst: bool) -> bool:
        """Read and process one batch; False when a burst run has nothing left to do."""
        self._prune_idle_consumers()
        batch = self._read(self._poll_block(burst))
        if batch:
            self._process(batch, handler, time.monotonic())
            return True
        if burst:
            wait = self._work_left()
            if wait is None:
                return False
            self._retry_due = time.monotonic() + wait
        return True

    def _poll_block(self, burst: bool) -> float | None:
        """How long the next read may wait for new messages."""
        until_retry = self._retry_due - time.monotonic()
        if until_retry <= 0:
            self._retry_due = float("inf")
            self._next_claim = 0.0
            return None
        wait = min(self.config.block_duration.total_seconds(), _POLL, until_retry)
        if burst and until_retry == float("inf"):
            return None
        return max(wait, 0.001)

    def _work_left(self) -> float | None:
        """Seconds until the next retry or own leftover is due; None when nothing is left."""
        cfg = self.config
        waits: list[float] = []
        for owner in (RETRY_CONSUMER, cfg.consumer):
            rows = self._pending(consumer=owner)
            # A waiting retry is claimed once shown by the claim clock and due, not before.
            due = self._due_times([r.id for r in rows]) if owner == RETRY_CONSUMER else {}
            now_ms = time.time() * 1000
            waits += [
                max(self._min_idle_ms - row.idle_ms, due.get(row.id, 0) - now_ms) / 1000
                for row in rows
            ]
        if not waits:
            return None
        return max(min(waits), 0.0)
