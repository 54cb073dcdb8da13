"""The exceptions streamlab raises: one base class, a small tree under it."""

from __future__ import annotations


class StreamlabError(Exception):
    """Base class of every error streamlab raises on purpose."""


class ConfigError(StreamlabError, ValueError):
    """Settings are invalid: an unknown key, a bad value, or keys that cannot share a slot."""


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
        self.delay = delay
        super().__init__(message)


class Reject(StreamlabError):
    """Raised by a handler to dead-letter a message at once, without further retries."""
