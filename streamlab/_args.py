"""Checks of public arguments, shared so that a bad value gets the same `ArgumentError` (a
`ValueError` under `StreamlabError`, naming the argument) wherever it is passed."""

from __future__ import annotations

import math
from datetime import timedelta

from streamlab.durations import parse_duration
from streamlab.errors import ArgumentError
from streamlab.ids import id_text, parse_id
from streamlab.keys import check_start_id

__all__ = [
    "count",
    "duration",
    "entry_id",
    "name",
    "optional_count",
    "positive_number",
    "start_id",
]


def count(name: str, value: object, *, minimum: int = 0, maximum: int | None = None) -> int:
    """``value`` if it is an int (not a bool) of at least ``minimum`` and, when given, at most
    ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        most = "" if maximum is None else f" and <= {maximum}"
        raise ArgumentError(f"{name}: expected an int >= {minimum}{most}, got {value!r}")
    if value < minimum:
        raise ArgumentError(f"{name}: must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ArgumentError(f"{name}: must be <= {maximum}, got {value}")
    return value


def optional_count(name: str, value: object, *, minimum: int = 0) -> int | None:
    """`count`, or None for None (no cap)."""
    return None if value is None else count(name, value, minimum=minimum)


def duration(name: str, value: object) -> timedelta:
    """A `Duration` argument (a timedelta, seconds, ``"5s"`` or ISO 8601) as a timedelta."""
    try:
        return parse_duration(value)
    except ArgumentError as exc:
        raise ArgumentError(f"{name}: {exc}") from None


def entry_id(name: str, value: object) -> str:
    """A stream id argument (``"1700000000000-0"``, text or bytes) in its canonical text."""
    if not isinstance(value, str | bytes):
        raise ArgumentError(f"{name}: expected a stream id like '1700000000000-0', got {value!r}")
    return id_text(parse_id(value, name))


def start_id(name: str, value: object) -> str:
    """A consumer group's start id argument: ``"$"``, ``"0"`` or a stream id, as
    `ConsumerConfig.group_start_id` takes it (`check_start_id`)."""
    if not isinstance(value, str):
        raise ArgumentError(f"{name}: expected '$', '0' or a stream id, got {value!r}")
    try:
        return check_start_id(value)
    except ValueError as exc:
        raise ArgumentError(f"{name}: {exc}") from None


def name(arg: str, value: object) -> str:
    """A stream, DLQ, group or consumer name: a non-empty str (redis-py would send an int as
    its digits, and refuse None or a bool with its own `DataError`)."""
    if not isinstance(value, str) or not value:
        raise ArgumentError(f"{arg}: expected a non-empty name (a str), got {value!r}")
    return value


def positive_number(
    name: str, value: object, *, minimum: float | None = None, maximum: float | None = None
) -> float:
    """``value`` as a float if it is a finite real number (not a bool) greater than 0, and
    within ``minimum`` and ``maximum`` when they are given."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ArgumentError(f"{name}: expected a finite number > 0, got {value!r}")
    if value <= 0:
        raise ArgumentError(f"{name}: must be > 0, got {value!r}")
    if minimum is not None and value < minimum:
        raise ArgumentError(f"{name}: must be >= {minimum:g}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ArgumentError(f"{name}: must be <= {maximum:g}, got {value!r}")
    return float(value)
