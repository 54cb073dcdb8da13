"""Durations: the `Duration` field type, `parse_duration` and `format_duration`.

A light module (pydantic only, no YAML or pydantic-settings): `ConsumerConfig`, `Backoff`
and the settings all use these, so a duration is read the same way from Python, YAML and the
environment.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, PlainSerializer, TypeAdapter, ValidationError

from streamlab.errors import ArgumentError

__all__ = ["Duration", "PositiveDuration", "format_duration", "parse_duration"]

_GO_UNIT_US = {
    "ns": Decimal("0.001"),
    "us": Decimal(1),
    "µs": Decimal(1),  # Go accepts both micro signs (U+00B5 and U+03BC)
    "μs": Decimal(1),
    "ms": Decimal(1_000),
    "s": Decimal(1_000_000),
    "m": Decimal(60_000_000),
    "h": Decimal(3_600_000_000),
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_GO_PART = re.compile(rf"({_NUMBER})(ns|us|µs|μs|ms|s|m|h)")
_GO_DURATION = re.compile(rf"(?:{_GO_PART.pattern})+")
_SECONDS = re.compile(_NUMBER)
_PYDANTIC_TIMEDELTA = TypeAdapter(timedelta)
_DURATION_FORMS = (
    "use a Go-style duration like '5s', '1m30s', '250ms' or '168h', "
    "a number of seconds, or ISO 8601 like 'PT5S'"
)


def parse_duration(value: object) -> timedelta:
    """A non-negative `timedelta` from a Go-style string, a number of seconds or ISO 8601.

    Go-style: one or more ``<number><unit>`` with units ``h``, ``m``, ``s``, ``ms``, ``us``
    (``µs``), ``ns`` (``"1h30m"``, ``"1.5s"``); nanoseconds round to microseconds. A bare
    number, or a string holding one, is seconds. Other strings go to pydantic's `timedelta`
    parsing (ISO 8601 ``"PT5S"``, ``"P7D"``). Raises `ArgumentError` (a `ValueError`) naming
    the accepted forms.
    """
    result = _to_timedelta(value)
    if result < timedelta(0):
        raise ArgumentError(f"duration {value!r} is negative; durations must be >= 0")
    return result


def _to_timedelta(value: object) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise ArgumentError(f"invalid duration {value!r}: {_DURATION_FORMS}")
    try:
        if not isinstance(value, str):
            return timedelta(seconds=float(value))
        text = value.strip()
        if _SECONDS.fullmatch(text):
            return timedelta(seconds=float(text))
        if _GO_DURATION.fullmatch(text):
            micros = sum(
                (Decimal(n) * _GO_UNIT_US[unit] for n, unit in _GO_PART.findall(text)),
                Decimal(0),
            )
            return timedelta(microseconds=int(micros.to_integral_value()))
        return _PYDANTIC_TIMEDELTA.validate_python(text)
    except (ValidationError, OverflowError, InvalidOperation, ValueError) as exc:
        raise ArgumentError(f"invalid duration {value!r}: {_DURATION_FORMS}") from exc


def format_duration(value: timedelta) -> str:
    """A Go-style string for ``value`` (``"1h30m"``, ``"250ms"``, ``"1.5s"``, ``"0s"``).

    `parse_duration` reads it back to the same `timedelta`.
    """
    micros = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    sign, micros = ("-", -micros) if micros < 0 else ("", micros)
    if 0 < micros < 1_000_000:
        return f"{sign}{micros // 1000}ms" if micros % 1000 == 0 else f"{sign}{micros}us"
    hours, micros = divmod(micros, 3_600_000_000)
    minutes, micros = divmod(micros, 60_000_000)
    secs, micros = divmod(micros, 1_000_000)
    text = f"{hours}h" if hours else ""
    text += f"{minutes}m" if minutes else ""
    if secs or micros or not text:
        text += f"{secs}.{micros:06d}".rstrip("0").rstrip(".") + "s"
    return sign + text


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
"""A `timedelta` field that also accepts ``"5s"``-style strings, seconds and ISO 8601."""


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError(f"must be greater than 0 (got {format_duration(value)})")
    return value


PositiveDuration = Annotated[Duration, AfterValidator(_positive)]
"""A `Duration` that must be greater than 0."""
