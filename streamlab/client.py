"""The streams client: the Redis commands streamlab needs, with typed replies.

`RedisStreamsClient` wraps a redis-py client created with ``decode_responses=False`` (payloads
may be binary; known fields are decoded in `streamlab.events`). Raw replies become
`StreamMessage` / `StreamInfo` here and nowhere else.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Protocol, runtime_checkable

import redis
import redis.connection

from streamlab.errors import (
    ConfigError,
    EncodeError,
    GroupNotFoundError,
    StreamNotFoundError,
    WrongTypeError,
)
from streamlab.events import (
    GroupInfo,
    StreamEvent,
    StreamInfo,
    StreamMessage,
    decode_entries,
    decode_message,
    encode_event,
)
from streamlab.keys import dlq_key
from streamlab.metrics import Metrics, NullMetrics
from streamlab.scripts import Scripts

__all__ = [
    "RawEntry",
    "RedisStreamsClient",
    "StreamsClient",
    "connect",
    "seconds",
    "translate_errors",
]

Fields = Mapping[str, Any]
# One entry as redis-py returns it: ``(id, {name: value})``, all bytes.
RawEntry = tuple[bytes, dict[bytes, bytes]]
# The read timeout redis-py gives connections that were not told one (5 s in redis-py 8).
_REDIS_PY_TIMEOUT: float = getattr(redis.connection, "DEFAULT_SOCKET_TIMEOUT", 5.0)


def seconds(value: float | timedelta | None) -> float | None:
    """A duration given as seconds or a timedelta, as float seconds."""
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def connect(url: str, **kwargs: Any) -> redis.Redis:
    """A redis-py client suited to streamlab: bytes replies and no socket read timeout.

    redis-py 8 defaults to ``socket_timeout=5``, which aborts a blocking XREADGROUP longer
    than that; streamlab's reads bound their own blocking time instead.
    """
    kwargs.setdefault("socket_timeout", None)
    kwargs.setdefault("socket_connect_timeout", 5)
    kwargs.setdefault("health_check_interval", 30)
    if kwargs.get("decode_responses"):
        raise ConfigError("decode_responses=True breaks binary payloads; leave it False")
    return redis.Redis.from_url(url, **kwargs)


@contextmanager
def translate_errors(stream: str, group: str | None = None) -> Iterator[None]:
    """Turn Redis errors about ``stream`` into streamlab's: WRONGTYPE into `WrongTypeError`;
    with a ``group``, NOGROUP (or a missing key, as XINFO CONSUMERS says) into
    `GroupNotFoundError`."""
    try:
        yield
    except redis.ResponseError as exc:
        text = str(exc)
        if text.startswith("WRONGTYPE"):
            raise WrongTypeError(f"key {stream!r} exists but is not a stream") from exc
        # UNBLOCKED: the stream was deleted while a blocking XREADGROUP waited on it.
        gone = text.startswith(("NOGROUP", "UNBLOCKED")) or "no such key" in text
        if group is not None and gone:
            raise GroupNotFoundError(
                f"consumer group {group!r} does not exist on stream {stream!r} "
                "(create it with ensure_group)"
            ) from exc
        raise


def _raw_id(fields: Fields) -> str | None:
    raw_id = fields.get("id", fields.get("event_id"))
    return raw_id if isinstance(raw_id, str) else None


def _utf8_names(fields: Fields, event_id: str | None) -> Fields:
    """``fields`` with every text name and value checked to be writable as UTF-8.

    A name decoded with surrogate escapes (it was not UTF-8 in the entry it came from) goes
    back to its exact bytes; any other lone surrogate is an `EncodeError`, raised here
    because redis-py would raise it only while sending, after earlier batches were written.
    """
    renamed: dict[Any, Any] | None = None
    for name, value in fields.items():
        if isinstance(value, str) and not value.isascii() and not _is_utf8(value):
            raise EncodeError(_NOT_UNICODE, field=_label(name), event_id=event_id)
        if isinstance(name, str) and not name.isascii() and not _is_utf8(name):
            try:
                raw = name.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                raise EncodeError(
                    f"the field name {_NOT_UNICODE}", field=_label(name), event_id=event_id
                ) from None
            renamed = renamed if renamed is not None else {}
            renamed[name] = raw
    if renamed is None:
        return fields
    return {renamed.get(name, name): value for name, value in fields.items()}


_NOT_UNICODE = "holds a lone surrogate, which UTF-8 cannot carry"


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _label(name: Any) -> str:
    text = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
    return text.encode("utf-8", "replace").decode()[:40]


def _check_raw(fields: Fields) -> None:
    """Raise `EncodeError` unless redis-py can write ``fields`` as they are: at least one
    field, names and values str, bytes, int or a finite float (never the values' text)."""
    event_id = _raw_id(fields)
    if not fields:
        raise EncodeError("an entry needs at least one field", event_id=event_id)
    for name, value in fields.items():
        label = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        if not isinstance(name, str | bytes):
            raise EncodeError(
                f"field names must be str or bytes, not {type(name).__name__}",
                field=label[:40],
                event_id=event_id,
            )
        if isinstance(value, bool) or not isinstance(value, str | bytes | int | float):
            raise EncodeError(
                f"values must be str, bytes, int or float, not {type(value).__name__}",
                field=label,
                event_id=event_id,
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise EncodeError(
                f"{value!r} is not a number other readers can parse", field=label, event_id=event_id
            )


@runtime_checkable
class StreamsClient(Protocol):
    """The stream operations workers use; `RedisStreamsClient` implements them on Redis."""

    def add_to_stream(
        self, stream: str, event: StreamEvent | Fields, *, maxlen: int | None = None
    ) -> str:
        """Add one event; return its stream id."""
        ...

    def add_many(
        self, stream: str, events: Iterable[StreamEvent | Fields], *, maxlen: int | None = None
    ) -> list[str]:
        """Add events in pipelined batches; return their stream ids in order."""
        ...

    def read_from_stream(
        self,
        stream: str,
        group: str,
        consumer: str,
        count: int,
        *,
        block: float | timedelta | None = None,
    ) -> list[StreamMessage]:
        """Read new messages for ``consumer`` in ``group``."""
        ...

    def ack_message(self, stream: str, group: str, message_id: str) -> int:
        """Acknowledge one message; return how many were acked (0 or 1)."""
        ...

    def get_stream_info(self, stream: str) -> StreamInfo:
        """Length, first and last ids, and groups of ``stream``."""
        ...

    def ensure_group(self, stream: str, group: str, start_id: str = "0") -> bool:
        """Create ``group`` (and the stream) if missing; return True when created."""
        ...

    def read_dlq(
        self, stream: str, *, start: str = "-", count: int | None = None
    ) -> list[StreamMessage]:
        """Read the DLQ of ``stream`` from ``start`` (oldest first)."""
        ...


class RedisStreamsClient:
    """`StreamsClient` on a redis-py client.

    ``metrics`` receives produced counts. ``dlq_names`` maps a stream to a DLQ name other than
    the default ``<stream>_dlq`` (a `Consumer` adds its own DLQ here, so that `read_dlq`, the
    exporters and replay find it). ``stream_maxlen`` maps a stream to the length producers
    cap it at when a call gives no ``maxlen`` (the seed's ``max_length``).
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        *,
        metrics: Metrics | None = None,
        dlq_names: Mapping[str, str] | None = None,
        stream_maxlen: Mapping[str, int] | None = None,
    ) -> None:
        kwargs = getattr(redis_client, "connection_pool", None)
        conn_kwargs = getattr(kwargs, "connection_kwargs", {}) if kwargs else {}
        if conn_kwargs.get("decode_responses"):
            raise ConfigError(
                "the redis client was created with decode_responses=True, which breaks binary "
                "payloads; create it with decode_responses=False (streamlab.connect does)"
            )
        # Any: redis-py's overloads (sync/async, RESP2/3) type replies as unions we narrow here.
        self.redis: Any = redis_client
        self.metrics: Metrics = metrics or NullMetrics()
        self.dlq_names = dict(dlq_names or {})
        self.stream_maxlen = dict(stream_maxlen or {})
        self.scripts = Scripts(redis_client)
        # redis.Redis.from_url(url) leaves socket_timeout out of connection_kwargs, yet its
        # connections use redis-py's default (5 s): a long block must be split for them too.
        timeout = conn_kwargs.get("socket_timeout", _REDIS_PY_TIMEOUT if kwargs else None)
        self._socket_timeout: float | None = float(timeout) if timeout else None

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisStreamsClient:
        """A client on a new connection made by `connect`."""
        return cls(connect(url, **kwargs))

    def dlq_stream(self, stream: str) -> str:
        """The DLQ stream name of ``stream``."""
        return dlq_key(stream, self.dlq_names.get(stream))

    # -- producing ---------------------------------------------------------------------------

    @staticmethod
    def _fields(event: StreamEvent | Fields) -> Fields:
        """The entry fields to write; `EncodeError` when ``event`` cannot be written."""
        if isinstance(event, StreamEvent):
            return _utf8_names(encode_event(event), event.id)
        _check_raw(event)
        return _utf8_names(event, _raw_id(event))

    def add_to_stream(
        self, stream: str, event: StreamEvent | Fields, *, maxlen: int | None = None
    ) -> str:
        """Add one event (or raw entry fields); return its stream id.

        ``maxlen`` (default: ``stream_maxlen[stream]``, else no cap) trims the stream
        approximately (``MAXLEN ~``), which keeps XADD O(1).
        """
        maxlen = maxlen or self.stream_maxlen.get(stream)
        with translate_errors(stream):
            entry_id = self.redis.xadd(stream, dict(self._fields(event)), maxlen=maxlen)
        self.metrics.produced(stream, 1)
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    def add_many(
        self,
        stream: str,
        events: Iterable[StreamEvent | Fields],
        *,
        maxlen: int | None = None,
        batch_size: int = 1000,
    ) -> list[str]:
        """Add events (or raw entry fields) in pipelined batches; return their ids in order.

        ``maxlen`` is as for `add_to_stream`. Every event is encoded before the first is
        written: when one cannot be (see `encode_event`), `EncodeError` names its index and
        event id and nothing is written. The encoded events are held until then, so feed a
        very long iterable in chunks.
        """
        maxlen = maxlen or self.stream_maxlen.get(stream)
        trim: tuple[str, ...] = ("MAXLEN", "~", str(maxlen)) if maxlen else ()
        flats: list[list[Any]] = []
        for index, event in enumerate(events):
            try:
                fields = self._fields(event)
            except EncodeError as exc:
                raise exc.at(index) from None
            flat: list[Any] = []
            for name, value in fields.items():
                flat.append(name)
                flat.append(value)
            flats.append(flat)
        ids: list[str] = []
        pipe = self.redis.pipeline(transaction=False)
        for start in range(0, len(flats), batch_size):
            for flat in flats[start : start + batch_size]:
                pipe.execute_command("XADD", stream, *trim, "*", *flat)
            ids.extend(self._flush(stream, pipe))
        return ids

    def _flush(self, stream: str, pipe: Any) -> list[str]:
        with translate_errors(stream):
            replies = pipe.execute()
        self.metrics.produced(stream, len(replies))
        return [r.decode() for r in replies]

    # -- consuming ---------------------------------------------------------------------------

    def ensure_group(self, stream: str, group: str, start_id: str = "0") -> bool:
        """Create ``group`` on ``stream`` (creating the stream too) unless it exists.

        Returns True when the group was created, False when it already existed (BUSYGROUP).
        """
        try:
            with translate_errors(stream, group):
                self.redis.xgroup_create(stream, group, id=start_id, mkstream=True)
        except redis.OutOfMemoryError:
            # A full server refuses XGROUP CREATE even for a group that exists.
            if self._has_group(stream, group):
                return False
            raise
        except redis.ResponseError as exc:
            if str(exc).startswith("BUSYGROUP"):
                return False
            raise
        return True

    def _has_group(self, stream: str, group: str) -> bool:
        try:
            groups = self.redis.xinfo_groups(stream)
        except redis.ResponseError:
            return False
        return any(_group_info(g).name == group for g in groups)

    def read_from_stream(
        self,
        stream: str,
        group: str,
        consumer: str,
        count: int,
        *,
        block: float | timedelta | None = None,
    ) -> list[StreamMessage]:
        """Read up to ``count`` new messages for ``consumer`` in ``group``.

        ``block`` (seconds or timedelta) waits for messages when none are there. A block
        longer than the connection's socket timeout is split into shorter waits so that it
        returns normally instead of raising TimeoutError.
        """
        return decode_entries(stream, self.read_entries(stream, group, consumer, count, block))

    def read_entries(
        self,
        stream: str,
        group: str,
        consumer: str,
        count: int,
        block: float | timedelta | None = None,
    ) -> list[RawEntry]:
        """`read_from_stream` without decoding: the raw ``(id, fields)`` entries, all bytes.

        For callers that decode later or not at all: `Consumer` decodes each entry just
        before its handler, so that handled messages die at once instead of living until
        their batch is settled.
        """
        wait = seconds(block)
        deadline = time.monotonic() + wait if wait else 0.0
        while True:
            chunk: int | None = None
            if wait:
                remaining = max(deadline - time.monotonic(), 0.001)
                if self._socket_timeout:
                    remaining = min(remaining, max(self._socket_timeout - 1.0, 0.5))
                chunk = max(int(remaining * 1000), 1)
            with translate_errors(stream, group):
                reply = self.redis.xreadgroup(group, consumer, {stream: ">"}, count, chunk)
            entries = self._entries(reply)
            if entries or not wait or time.monotonic() >= deadline:
                return entries

    @staticmethod
    def _entries(reply: Any) -> list[RawEntry]:
        if not reply:
            return []
        # RESP2 gives [[name, entries]], RESP3 {name: [entries]}.
        entries: list[RawEntry] = (
            next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
        )
        if entries and isinstance(entries[0], list) and len(entries) == 1:
            entries = entries[0]
        return entries

    def ack_message(self, stream: str, group: str, message_id: str) -> int:
        """Acknowledge one message; return how many were acked (0 or 1)."""
        return self.ack_many(stream, group, [message_id])

    def ack_many(self, stream: str, group: str, message_ids: Sequence[str]) -> int:
        """Acknowledge messages in one XACK; return how many were pending."""
        if not message_ids:
            return 0
        with translate_errors(stream, group):
            return int(self.redis.xack(stream, group, *message_ids))

    # -- inspecting --------------------------------------------------------------------------

    def get_stream_info(self, stream: str) -> StreamInfo:
        """Length, first and last ids, and every group with its lag (which may be None)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.xlen(stream)
        pipe.xrange(stream, "-", "+", count=1)
        pipe.xrevrange(stream, "+", "-", count=1)
        pipe.xinfo_groups(stream)
        try:
            with translate_errors(stream):
                length, first, last, groups = pipe.execute()
        except redis.ResponseError as exc:
            if "no such key" in str(exc):
                raise StreamNotFoundError(f"stream {stream!r} does not exist") from exc
            raise
        return StreamInfo(
            stream=stream,
            length=int(length),
            first_id=first[0][0].decode() if first else None,
            last_id=last[0][0].decode() if last else None,
            groups=[_group_info(g) for g in groups],
        )

    def range(
        self, stream: str, start: str = "-", end: str = "+", count: int | None = None
    ) -> list[StreamMessage]:
        """Entries of ``stream`` between ``start`` and ``end`` (XRANGE), decoded."""
        with translate_errors(stream):
            entries = self.redis.xrange(stream, start, end, count=count)
        return decode_entries(stream, entries)

    def read_dlq(
        self, stream: str, *, start: str = "-", count: int | None = None
    ) -> list[StreamMessage]:
        """Read the DLQ of ``stream``, oldest first, from ``start`` (inclusive).

        ``start`` is a stream id or ``"-"``. The seed passed ``"$"``, which means "only newer
        entries" and so reads nothing from XRANGE; it is taken as ``"-"`` here.
        """
        if start in ("$", "0", ""):
            start = "-"
        return self.range(self.dlq_stream(stream), start, "+", count)

    def message(self, stream: str, entry_id: str, delivery_count: int = 1) -> StreamMessage | None:
        """One entry by id, or None when it is not in the stream."""
        entries = self.redis.xrange(stream, entry_id, entry_id, count=1)
        if not entries:
            return None
        eid, raw = entries[0]
        return decode_message(stream, eid, raw, delivery_count)


def _group_info(raw: Mapping[Any, Any]) -> GroupInfo:
    def get(name: str) -> Any:
        value = raw.get(name, raw.get(name.encode()))
        return value.decode() if isinstance(value, bytes) else value

    lag = get("lag")
    read = get("entries-read")
    return GroupInfo(
        name=get("name"),
        consumers=int(get("consumers") or 0),
        pending=int(get("pending") or 0),
        last_delivered_id=get("last-delivered-id") or "0-0",
        lag=None if lag is None else int(lag),
        entries_read=None if read is None else int(read),
    )
