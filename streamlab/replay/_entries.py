"""DLQ entries as read, and the id, client and paging helpers the replay modules share."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from streamlab.client import translate_errors
from streamlab.events import StreamEvent, StreamMessage, decode_message
from streamlab.ids import paged
from streamlab.records import (
    AUTH_CONTEXT_FIELD,
    DLQ_FIELDS,
    REPLAY_FIELDS,
    read_name,
    tenant_of,
)
from streamlab.signatures import failure_signature

PAGE: Final = 1000

_DLQ_B = frozenset(name.encode() for name in DLQ_FIELDS)
# A replayed event gets a fresh marker: any old one (complete or not) is dropped. Fields a
# producer named ``replay_group`` and the like are its own data and are kept.
_DROP = _DLQ_B | frozenset(name.encode() for name in REPLAY_FIELDS)
_COUNT_FIELD: Final = REPLAY_FIELDS[2].encode()  # how often the event was replayed before
_AUTH_KEY: Final = AUTH_CONTEXT_FIELD.encode()


# -- DLQ entries -------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Entry:
    """One DLQ entry as read: its id and raw fields (names and values as bytes)."""

    id: str
    raw: dict[bytes, bytes]
    dlq: str = ""
    _message: StreamMessage | None = None

    def text(self, name: bytes) -> str:
        value = self.raw.get(name)
        return "" if value is None else value.decode("utf-8", "replace")

    def field(self, own: bytes) -> str:
        """Field ``own`` (``b"repository"``, ``b"id"``...) under the name decoding reads it from
        (`streamlab.records.read_name`: streamlab's own name over an alias); '' when absent."""
        key = read_name(own, self.raw)
        return "" if key is None else self.text(key)

    @property
    def event_type(self) -> str:
        return self.text(b"event_type")

    @property
    def repository(self) -> str:
        return self.field(b"repository")

    @property
    def tenant(self) -> str:
        # As decode_event reads it (`tenant_of`): the tenant field, else auth_context's.
        return tenant_of(self.field(b"tenant_id"), self.raw.get(_AUTH_KEY))

    def column(self, name: str) -> str:
        """The value the DLQ frame's column ``name`` has for this entry (`DLQFilter`)."""
        if name == "event_type":
            return self.event_type
        if name == "tenant_id":
            return self.tenant
        if name == "repository":
            return self.repository
        if name == "error_signature":
            return failure_signature(
                self.text(b"dlq_error_type"), self.text(b"dlq_error"), self.text(b"dlq_traceback")
            )
        return self.text(b"dlq_" + name.encode())  # error_type, error, ...

    def event(self) -> StreamEvent | None:
        """The event decoded; None when it does not decode."""
        return self.message().event

    def message(self) -> StreamMessage:
        """The DLQ entry decoded (``failure`` set; ``event`` None when it does not decode)."""
        if self._message is None:
            self._message = decode_message(self.dlq, self.id, self.raw)
        return self._message

    def original(self, retry_count: bytes = b"0") -> list[bytes]:
        """Flat name, value list of the event to inject: dlq_* and old marker fields dropped."""
        flat: list[bytes] = []
        seen_retry = False
        for name, value in self.raw.items():
            if name in _DROP:
                continue
            if name == b"retry_count":
                seen_retry = True
                flat += (name, retry_count)
            else:
                flat += (name, value)
        if not seen_retry:
            flat += (b"retry_count", retry_count)
        return flat


def _page(r: Any, key: str, start: str, end: str) -> Iterator[tuple[bytes, dict[bytes, bytes]]]:
    """Entries of ``key`` from ``start`` to ``end``, in pages of `PAGE`."""

    def fetch(lo: str, size: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
        with translate_errors(key):
            return r.xrange(key, lo, end, count=size)  # type: ignore[no-any-return]

    for batch in paged(fetch, start, None, PAGE, lambda entry: "(" + entry[0].decode()):
        yield from batch


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
