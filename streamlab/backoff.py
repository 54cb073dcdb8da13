"""The retry schedule as a pure function: no Redis, no clock."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Backoff", "compute_backoff"]


class Backoff(BaseModel):
    """Exponential backoff between retries.

    The seed's default: the first retry is immediate, then ``initial`` (1 s), then doubling
    (2 s, 4 s, ...) up to ``max``. ``jitter`` spreads each delay by up to that fraction either
    way, so that a burst of failures does not retry in lockstep.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    initial: timedelta = timedelta(seconds=1)
    multiplier: float = Field(default=2.0, ge=1.0)
    max: timedelta = timedelta(seconds=60)
    first_immediate: bool = True
    jitter: float = Field(default=0.0, ge=0.0, le=1.0)


def compute_backoff(
    retry: int, backoff: Backoff | None = None, *, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
    if retry < 1:
        raise ValueError(f"retry numbers start at 1, got {retry}")
    policy = backoff or Backoff()
    if policy.first_immediate:
        if retry == 1:
            return 0.0
        retry -= 1
    delay = policy.initial.total_seconds() * policy.multiplier ** (retry - 1)
    delay = min(delay, policy.max.total_seconds())
    if policy.jitter:
        delay *= 1.0 + policy.jitter * (2.0 * rand() - 1.0)
    return max(delay, 0.0)
