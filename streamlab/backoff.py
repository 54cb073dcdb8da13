"""The retry schedule as a pure function: no Redis, no clock."""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Self

from pydantic import Field, model_validator

from streamlab import _args
from streamlab._config_model import ConfigModel, Number
from streamlab.durations import Duration, format_duration

__all__ = ["Backoff", "compute_backoff"]


class Backoff(ConfigModel):
    """Exponential backoff between retries.

    The seed's default: the first retry is immediate, then ``initial`` (1 s), then doubling
    (2 s, 4 s, ...) up to ``max``. ``jitter`` spreads each delay by up to that fraction either
    way, so that a burst of failures does not retry in lockstep. Durations are `Duration`s
    (``"1s"``, seconds, ISO 8601 or a `timedelta`), >= 0, and ``max`` >= ``initial``; a bad
    value raises `ConfigError` naming the field. The YAML ``backoff:`` section of a stream is
    this model, so a value is valid or invalid the same way in Python, YAML and environment.
    """

    initial: Duration = timedelta(seconds=1)
    multiplier: Number = Field(default=2.0, ge=1.0, allow_inf_nan=False)
    max: Duration = timedelta(seconds=60)
    first_immediate: bool = True
    jitter: Number = Field(default=0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.max < self.initial:
            raise ValueError(
                f"max ({format_duration(self.max)}) is below initial "
                f"({format_duration(self.initial)})"
            )
        return self


def compute_backoff(
    retry: int, backoff: Backoff | None = None, *, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before retry number ``retry`` (1 for the first retry).

    Any ``retry`` works: the exponent stops growing once the delay reaches ``max``, so a large
    retry count never overflows. A ``retry`` below 1 (or no int) is an `ArgumentError`.
    """
    retry = _args.count("retry", retry, minimum=1)
    policy = backoff or Backoff()
    if policy.first_immediate:
        if retry == 1:
            return 0.0
        retry -= 1
    delay = _grown(policy.initial.total_seconds(), policy.multiplier, retry - 1)
    delay = min(delay, policy.max.total_seconds())
    if policy.jitter:
        delay *= 1.0 + policy.jitter * (2.0 * rand() - 1.0)
    return max(delay, 0.0)


def _grown(base: float, multiplier: float, exponent: int) -> float:
    """``base * multiplier ** exponent``, or infinity when that would come near overflowing a
    float (any cap on a delay is far below that)."""
    if base <= 0.0 or exponent <= 0 or multiplier == 1.0:
        return base
    # Compared in log space, with a margin: an int compares with a float exactly, however large.
    if exponent >= (_LOG_FLOAT_MAX - 1.0 - math.log(base)) / math.log(multiplier):
        return math.inf
    return base * multiplier**exponent


_LOG_FLOAT_MAX = math.log(sys.float_info.max)
