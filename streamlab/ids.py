"""Stream ids and the time bounds of a range: ``since=`` / ``until=`` everywhere.

A stream id is ``<milliseconds>-<sequence>``. Every function that reads a range of a stream
(the exporters, the Parquet export, `select_dlq`, `replay_dlq`, the CLI's ``--since`` /
``--until``) takes its bounds through `id_range`, so each accepts the same values:

- an aware `datetime` (a naive one is refused: it would silently mean the machine's zone);
- a `timedelta`: that long ago;
- a stream id ``"1700000000000-3"`` (bounding at that very entry: several entries can share a
  millisecond), or milliseconds since the epoch as ``"1700000000000"`` or an ``int``;
- an RFC 3339 / ISO 8601 time with its zone, ``"2026-11-30T14:00:00Z"``.

Both bounds are inclusive.

Every paged read (XRANGE, XPENDING) pages through `paged`: each page starts after the last id
of the one before, and a page shorter than asked for is the last.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sized
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias, TypeVar

from streamlab.errors import ArgumentError

__all__ = [
    "MAX_ID", "Bound", "Pager", "bound", "entry_time", "id_range", "id_text", "paged", "parse_id",
]  # fmt: skip

# A stream id may come as redis-py returns it (bytes).
Bound: TypeAlias = datetime | timedelta | str | bytes | int
StreamId: TypeAlias = tuple[int, int]

_MAX = 2**64 - 1
MAX_ID: StreamId = (_MAX, _MAX)
_ID = re.compile(r"(\d+)-(\d+)")
_MS = re.compile(r"\d+")


def parse_id(value: str | bytes, name: str = "id") -> StreamId:
    """``"1700000000000-3"`` as ``(1700000000000, 3)``; `ArgumentError` naming ``name``."""
    text = value.decode() if isinstance(value, bytes) else str(value)
    match = _ID.fullmatch(text.strip())
    if not match or int(match[1]) > _MAX or int(match[2]) > _MAX:
        if match:
            raise ArgumentError(f"{name}: {text!r} is out of range: each part of an id is < 2**64")
        raise ArgumentError(f"{name}: {value!r} is not a stream id like '1700000000000-0'")
    return int(match[1]), int(match[2])


def id_text(parsed: StreamId) -> str:
    """``(1700000000000, 3)`` as ``"1700000000000-3"``."""
    return f"{parsed[0]}-{parsed[1]}"


def entry_time(entry_id: str | bytes) -> datetime:
    """When an entry was added: its id's milliseconds, as an aware UTC datetime."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return datetime.fromtimestamp(int(text.split("-", 1)[0]) / 1000, UTC)


def _ms(value: datetime, name: str, text: str | None = None) -> int:
    """``value`` in ms since the epoch; ``text`` is what it was read from, named in the error."""
    if value.tzinfo is None or value.utcoffset() is None:
        if text is not None:
            fixed = text + "Z"
            try:
                datetime.fromisoformat(fixed)
            except ValueError:  # a date alone takes no zone: show the whole time with one
                fixed = value.isoformat() + "Z"
            raise ArgumentError(f"{name}: {text!r} has no time zone; add one ({fixed!r})")
        raise ArgumentError(
            f"{name}: {value!r} has no time zone; give an aware datetime "
            "(datetime.now(UTC) - timedelta(hours=1)) or a timedelta"
        )
    return max(int(value.timestamp() * 1000), 0)


def bound(value: Bound, name: str, *, upper: bool) -> StreamId:
    """One inclusive bound as a stream id (the whole millisecond for a time)."""
    if isinstance(value, bool):
        raise ArgumentError(
            f"{name}: expected a datetime, timedelta, stream id or ms, got {value!r}"
        )
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise ArgumentError(f"{name}: a timedelta means 'that long ago'; got {value}")
        try:
            ms = _ms(datetime.now(UTC) - value, name)
        except OverflowError:  # before the year 1, so before every entry
            ms = 0
    elif isinstance(value, datetime):
        ms = _ms(value, name)
    elif isinstance(value, int):
        if not 0 <= value <= _MAX:
            raise ArgumentError(f"{name}: {value} is out of range: milliseconds are 0 to 2**64-1")
        ms = value
    elif isinstance(value, str | bytes):
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        text = text.strip()
        if text in ("-", "+"):
            return MAX_ID if text == "+" else (0, 0)
        if _ID.fullmatch(text):
            return parse_id(text, name)
        if _MS.fullmatch(text):
            return bound(int(text), name, upper=upper)
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise ArgumentError(
                f"{name}: {value!r} is neither a stream id, milliseconds nor a time with a zone"
            ) from None
        ms = _ms(when, name, text)
    else:
        raise ArgumentError(
            f"{name}: expected a datetime, timedelta, stream id or ms, got {type(value).__name__}"
        )
    return (ms, _MAX) if upper else (ms, 0)


def id_range(
    since: Bound | None, until: Bound | None, *, names: tuple[str, str] = ("since", "until")
) -> tuple[str, str] | None:
    """XRANGE's ``start`` and ``end`` for ``since`` .. ``until``; None when the range is empty."""
    lo = (0, 0) if since is None else bound(since, names[0], upper=False)
    hi = MAX_ID if until is None else bound(until, names[1], upper=True)
    if lo > hi:
        return None
    return id_text(lo), id_text(hi)


# -- paged reads -------------------------------------------------------------------------

_Row = TypeVar("_Row")


class Pager:
    """The paging rule of every paged read: pages of ``page_size`` rows, at most ``limit``
    (None: no cap) in all; a page shorter than asked for is the last."""

    def __init__(self, limit: int | None, page_size: int) -> None:
        self.remaining = limit
        self.page_size = page_size

    def size(self) -> int:
        """How many rows to ask for next (0: the cap is reached)."""
        return self.page_size if self.remaining is None else min(self.page_size, self.remaining)

    def took(self, page: Sized, size: int) -> bool:
        """Count a page of ``size`` asked for; whether another page follows."""
        if self.remaining is not None:
            self.remaining -= len(page)
        return len(page) == size and (self.remaining is None or self.remaining > 0)


def paged(
    fetch: Callable[[Any, int], list[_Row]],
    start: Any,
    limit: int | None,
    page_size: int,
    after: Callable[[_Row], Any],
) -> Iterator[list[_Row]]:
    """The pages of ``fetch(start, count)``, each next one from ``after(last row)`` (an
    exclusive ``(id``: rows added or removed meanwhile never make a page repeat or skip one)."""
    pager = Pager(limit, page_size)
    size = pager.size()
    while size > 0:
        page = fetch(start, size)
        if page:
            yield page
        if not pager.took(page, size):
            return
        start, size = after(page[-1]), pager.size()
