"""The exceptions streamlab raises: one base class, a small tree under it."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError
    from pydantic_core import ErrorDetails


class StreamlabError(Exception):
    """Base class of every error streamlab raises on purpose."""


class ConfigError(StreamlabError, ValueError):
    """Settings are invalid: an unknown key, a bad value, or keys that cannot share a slot.

    ``problems`` lists (field path, reason) pairs when the error comes from validating a model;
    ``details`` holds pydantic's errors behind them, nested models' errors flattened into
    their parent's (see `flatten_errors`).
    """

    problems: tuple[tuple[str, str], ...] = ()
    details: tuple[ErrorDetails, ...] = ()

    @classmethod
    def from_validation(cls, exc: ValidationError, what: str) -> ConfigError:
        """One error naming every bad field of ``what`` (a model name) and why."""
        details = flatten_errors(exc.errors())
        problems: list[tuple[str, str]] = []
        for error in details:
            where = ".".join(str(part) for part in error["loc"])
            cause = error.get("ctx", {}).get("error")
            if error["type"] == "value_error":
                reason = str(cause if cause is not None else error["msg"])
            elif error["type"] == "extra_forbidden":
                reason = "unknown key"
            elif error["type"] == "missing":
                reason = "required"
            else:
                reason = f"{error['msg']} (got {repr(error['input'])[:80]})"
            problems.append((where, reason))
        text = "; ".join(f"{w}: {r}" if w else r for w, r in problems)
        result = cls(f"invalid {what}: {text}")
        result.problems = tuple(problems)
        result.details = tuple(details)
        return result


def flatten_errors(errors: list[ErrorDetails]) -> list[ErrorDetails]:
    """pydantic's errors with each nested model's `ConfigError` (a model whose ``__init__``
    raises one, like `Backoff`) replaced by that model's own errors, under its location.
    Defaults that depend on a field already reported are left out."""
    flat: list[ErrorDetails] = []
    for error in errors:
        if error["type"] == "default_factory_not_called":
            continue
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, ConfigError) and cause.details:
            for inner in cause.details:
                flat.append({**inner, "loc": (*error["loc"], *inner["loc"])})
            continue
        flat.append(error)
    return flat


class ArgumentError(StreamlabError, ValueError):
    """A function was given a bad argument value; the message names the argument."""


class NotFoundError(StreamlabError, KeyError):
    """An id (a DLQ entry, a replay run) that is not there; the message names it."""

    def __str__(self) -> str:
        # KeyError's str() quotes its argument: give the sentence as written.
        return str(self.args[0]) if self.args else ""


class DecodeError(StreamlabError, ValueError):
    """A stream entry cannot be decoded into a `StreamEvent`.

    ``field`` names the offending entry field and ``entry_id`` the stream id, when known.
    """

    def __init__(self, message: str, *, field: str | None = None, entry_id: str | None = None):
        self.field = field
        self.entry_id = entry_id
        where = []
        if entry_id is not None:
            where.append(f"entry {entry_id}")
        if field is not None:
            where.append(f"field {field!r}")
        prefix = f"{', '.join(where)}: " if where else ""
        super().__init__(f"{prefix}{message}")


class EncodeError(StreamlabError, ValueError):
    """An event cannot be written: a value JSON cannot carry (NaN, Infinity, an unknown type)
    or JSON nested deeper than `streamlab.events.MAX_DEPTH`.

    ``field`` is the offending path (``payload.items[2].price``), ``event_id`` the event's id
    and ``index`` its position in an `add_many` call, when known. The text never holds the value.
    """

    def __init__(
        self,
        reason: str,
        *,
        field: str | None = None,
        event_id: str | None = None,
        index: int | None = None,
    ):
        self.reason = reason
        self.field = field
        self.event_id = event_id
        self.index = index
        where = []
        if index is not None:
            where.append(f"event {index}")
        if event_id is not None:
            where.append(f"id {event_id!r}")
        head = " ".join(where[:1]) + (f" ({where[1]})" if len(where) > 1 else "")
        if index is None and event_id is not None:
            head = f"event {event_id!r}"
        prefix = ": ".join(part for part in (head, field) if part)
        super().__init__(f"{prefix}: {reason}" if prefix else reason)

    def at(self, index: int) -> EncodeError:
        """The same error, naming the event's position in a batch."""
        return EncodeError(self.reason, field=self.field, event_id=self.event_id, index=index)


class PartialWriteError(StreamlabError):
    """`add_many` wrote some events, and the server refused others (out of memory, say).

    A pipelined write is no transaction, and which commands a server refuses can change from
    one to the next (its memory use moves while it works), so the events written need not be
    the first ones. ``ids`` has one item per event given: its stream id when it was written,
    None when it was not (refused, or not sent after the error); ``unwritten`` their indexes,
    to send again: ``add_many(stream, [events[i] for i in err.unwritten])`` duplicates
    nothing. The server's first refusal is the ``__cause__`` (and `error`).
    """

    def __init__(self, stream: str, ids: list[str | None], error: BaseException):
        self.stream = stream
        self.ids = ids
        self.error = error
        self.unwritten = [i for i, entry_id in enumerate(ids) if entry_id is None]
        written = len(ids) - len(self.unwritten)
        super().__init__(
            f"stream {stream!r}: {written} of {len(ids)} events written, the others refused "
            f"or not sent ({error}); their indexes are in .unwritten"
        )


class StreamNotFoundError(StreamlabError, LookupError):
    """The stream key does not exist."""


class GroupNotFoundError(StreamlabError, LookupError):
    """The consumer group does not exist on the stream (Redis NOGROUP)."""


class WrongTypeError(StreamlabError, TypeError):
    """The key exists but holds something other than a stream."""


class PermissionDeniedError(StreamlabError, PermissionError):
    """The server's ACL refused a command (Redis NOPERM); ``command`` names it when known.

    The README's "Least privilege" section lists the rights each role needs.
    """

    def __init__(self, message: str, *, command: str | None = None):
        self.command = command
        super().__init__(message)


class MissingDependencyError(StreamlabError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class ServerStartError(StreamlabError, RuntimeError):
    """The embedded Redis/Valkey server could not be started."""


class Retry(StreamlabError):
    """Raised by a handler to ask for a retry, optionally after a specific delay in seconds."""

    def __init__(self, message: str = "retry requested", *, delay: float | None = None):
        # NaN or infinity crashed the worker settling the retry; refused here, inside the
        # handler, they count as its failure (a ValueError) and take the configured backoff.
        if delay is not None and not math.isfinite(delay):
            raise ValueError(f"Retry delay must be a finite number of seconds, got {delay!r}")
        self.delay = delay
        super().__init__(message)


class Reject(StreamlabError):
    """Raised by a handler to dead-letter a message at once, without further retries."""
