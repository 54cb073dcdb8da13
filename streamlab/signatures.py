"""Error signatures: fold thousands of dead letters into the handful of bugs behind them.

Two failures have the same signature when their error text is the same once the parts that
vary from one event to the next are replaced by placeholders, and their tracebacks pass through
the same frames (file name and function, not line numbers, so a signature survives an unrelated
edit of the file). What varies is data, not the bug: times and dates (``<time>``), durations
(``<duration>``), SHAs of any length and other hex (``<hex>``), GitHub node ids (``<node>``),
``owner/repo`` names (``<repo>``), git refs (``<ref>``), uuids, e-mail addresses, URLs, IP
addresses, stream ids, quoted values and numbers.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable

__all__ = ["error_signature", "failure_signature", "normalise_error", "traceback_frames"]

MAX_TEXT = 200


def _ipv6(match: re.Match[str]) -> str:
    address, rest = match[1] or match[2], ""
    if address.endswith(":") and not address.endswith("::"):  # "fe80::1: refused"
        address, rest = address[:-1], ":"
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        return match[0]
    return "<ip>" + rest


# Slash pairs that are words, not owner/repo names ("Input/output error", MIME types).
_NOT_REPOS = (
    r"(?i:and/or|either/or|input/output|i/o|read/write|client/server|true/false|yes/no|on/off"
    r"|n/a|w/o|tcp/ip|(?:application|text|image|audio|video|multipart|font)/[\w.+-]+)(?![\w/])"
)
_MONTH = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_UNITS = r"(?:ns|us|µs|ms|s|m|h|d)"
_WORD_UNITS = r"(?:milliseconds?|seconds?|secs?|minutes?|mins?|hours?|hrs?|days?|weeks?)"

# Order matters: the specific shapes first, so that a uuid is not eaten as hex and numbers,
# and a time is not eaten as an IPv6 address or three numbers.
_RULES: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    # ISO 8601 / RFC 3339 dates and times, with or without zone; HTTP (RFC 7231) dates.
    (re.compile(r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?)?"
                r"(?:Z|[+-]\d{2}:?\d{2})?(?!\w|:\d)"), "<time>"),
    (re.compile(rf"\b(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?\d{{1,2}} {_MONTH} \d{{4}}"
                r"(?: \d{2}:\d{2}(?::\d{2})?)?(?: (?:GMT|UTC|[+-]\d{4}))?\b"), "<time>"),
    (re.compile(r"\b[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\b"), "<uuid>"),
    (re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"), "<email>"),
    (re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://\S+"), "<url>"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"), "<ip>"),
    # IPv6 candidates (two colons or more, or in brackets), kept when they parse as one.
    (re.compile(r"\[([0-9a-fA-F:.]+)\](?::\d+)?"
                r"|(?<![\w:])([0-9a-fA-F]*:[0-9a-fA-F]*:[0-9a-fA-F:.]*)(?!\w)"), _ipv6),
    # Times of day, once IPv6 addresses are gone: 14:07, 14:07:41.250, 9:05 PM, 0:00:05 (timedelta).
    (re.compile(r"(?<![\w:.])\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?: ?[AaPp][Mm]\b| ?UTC\b|Z\b)?"
                r"(?!\w|:\d)"), "<time>"),
    (re.compile(r"\b\d{10,}-\d+\b"), "<id>"),
    # GitHub node ids: "PR_kwDOABPHjc5sww2K", "U_kgDOAAdVGg"; legacy base64 "MDQ6VXNlcjU4MzIzMQ==".
    (re.compile(r"\b[A-Z]{1,4}_k[a-z][A-Z]{2}[\w-]+|\bMD[A-Za-z0-9+/]{10,}={0,2}(?![\w+/=])"),
     "<node>"),
    (re.compile(r"\brefs/(?:heads|tags|pull|remotes)/[^\s'\",;]+"), "<ref>"),
    (re.compile(rf"(?<![\w./<-])(?!{_NOT_REPOS})[A-Za-z0-9][A-Za-z0-9-]{{0,38}}/[\w.-]{{1,100}}"
                r"(?![\w/])"), "<repo>"),
    (re.compile(r"(?<![\w\\])'(?:[^'\\\n]|\\.)*'"), "<str>"),
    (re.compile(r'(?<![\w\\])"(?:[^"\\\n]|\\.)*"'), "<str>"),
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "<hex>"),
    # Full SHA-1 / SHA-256 even when all digits (GitHub's all-zero SHA of a created branch);
    # shorter hex only when it mixes digits and letters, so that plain numbers stay numbers.
    (re.compile(r"\b(?:[0-9a-fA-F]{40}|[0-9a-fA-F]{64})\b"), "<hex>"),
    # An abbreviated SHA that is all digits or all letters, where git syntax or a word says so.
    (re.compile(r"(\.\.\.?|\b(?i:commit|sha|tree|head|rev|revision|parent)[ :=]+)[0-9a-f]{7,39}\b"),
     r"\1<hex>"),
    (re.compile(r"\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{7,}\b"), "<hex>"),
    (re.compile(rf"\b(?:\d+(?:\.\d+)?{_UNITS})+\b|\b\d+(?:\.\d+)? ?{_WORD_UNITS}\b"
                r"|\bP(?=\d|T\d)(?:\d+[YMWD])*(?:T(?:\d+(?:\.\d+)?[HMS])+)?\b"), "<duration>"),
    (re.compile(r"(?:(?<!\w)[-+])?(?<![A-Za-z])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"), "<n>"),
    (re.compile(r"\s+"), " "),
)  # fmt: skip
_KEY_ONLY = re.compile(r"((?:\w+: )?')([^'\n]{1,80})(')")
_FRAME = re.compile(r'File "([^"]+)", line \d+, in (\S+)')


def normalise_error(error: str) -> str:
    """The error text with its variable parts replaced by ``<uuid>``, ``<n>``, ``<str>``...

    Numbers of any kind become ``<n>`` (so ``HTTP 503`` and ``HTTP 502`` fold together:
    split by ``error`` in `streamlab.frames.dlq_summary` when the number matters).
    """
    text = error
    for pattern, placeholder in _RULES:
        text = pattern.sub(placeholder, text)
    text = text.strip()
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def traceback_frames(traceback: str) -> list[tuple[str, str]]:
    """``(file name, function)`` of each frame of a Python traceback, outermost first."""
    return [
        (path.replace("\\", "/").rsplit("/", 1)[-1], func)
        for path, func in _FRAME.findall(traceback)
    ]


def _last_line(traceback: str) -> str:
    lines = [line for line in traceback.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def error_signature(error: str, traceback: str = "") -> str:
    """A short, stable key shared by failures that are the same bug.

    The normalised error text, followed by ``[xxxxxxxx]``, a hash of the traceback's frames
    when the traceback has any. An empty ``error`` falls back to the traceback's last line.
    A message that is only a quoted value (``KeyError: 'release_notes'``) keeps it, since
    there the value names the bug, with the variable parts of the value normalised
    (``KeyError: 'evt-0042'`` gives ``KeyError: 'evt-<n>'``). Frames are (file name,
    function) without line numbers, so two raises in one function share the hash; their texts
    usually tell them apart.

    >>> error_signature("order 4411 not found for 'acme'")
    'order <n> not found for <str>'
    """
    source = (error or _last_line(traceback)).strip()
    # A KeyError's whole message is the missing key: a named key is the bug, keep it.
    key = _KEY_ONLY.fullmatch(source)
    text = f"{key[1]}{normalise_error(key[2])}{key[3]}" if key else normalise_error(source)
    frames = traceback_frames(traceback) if traceback else []
    if not frames:
        return text
    digest = hashlib.sha1(
        "|".join(f"{name}:{func}" for name, func in frames).encode(), usedforsecurity=False
    ).hexdigest()[:8]
    return f"{text} [{digest}]"


def failure_signature(error_type: str, error: str, traceback: str = "") -> str:
    """The signature of a failure record (a DLQ entry's ``dlq_error_type``, ``dlq_error`` and
    ``dlq_traceback``): the error text led by its type, as the DLQ frame's ``error_signature``.
    """
    text = (
        error
        if not (error_type and error) or error.startswith(error_type)
        else (f"{error_type}: {error}")
    )
    return error_signature(text, traceback)
