"""Error signatures: fold thousands of dead letters into the handful of bugs behind them.

Two failures have the same signature when their error text is the same once the parts that
vary from one event to the next (ids, numbers, hex, uuids, quoted values, addresses) are
replaced by placeholders, and their tracebacks pass through the same frames (file name and
function, not line numbers, so a signature survives an unrelated edit of the file).
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["error_signature", "normalise_error", "traceback_frames"]

MAX_TEXT = 200

# Order matters: the specific shapes first, so that a uuid is not eaten as hex and numbers.
_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\b"), "<uuid>"),
    (re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"), "<email>"),
    (re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://\S+"), "<url>"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"), "<ip>"),
    (re.compile(r"\b\d{10,}-\d+\b"), "<id>"),
    (re.compile(r"(?<![\w\\])'(?:[^'\\\n]|\\.)*'"), "<str>"),
    (re.compile(r'(?<![\w\\])"(?:[^"\\\n]|\\.)*"'), "<str>"),
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "<hex>"),
    (re.compile(r"\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b"), "<hex>"),
    (re.compile(r"(?<![A-Za-z])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"), "<n>"),
    (re.compile(r"\s+"), " "),
)  # fmt: skip
_KEY_ONLY = re.compile(r"(?:\w+: )?'[^'\n]{1,80}'")
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
    A message that is only a quoted value (``KeyError: 'release_notes'``) is kept as is:
    there the value names the bug. Frames are (file name, function) without line numbers,
    so two raises in one function share the hash; their texts usually tell them apart.

    >>> error_signature("order 4411 not found for 'acme'")
    'order <n> not found for <str>'
    """
    source = error or _last_line(traceback)
    # A KeyError's whole message is the missing key: that key is the bug, keep it.
    text = source.strip() if _KEY_ONLY.fullmatch(source.strip()) else normalise_error(source)
    frames = traceback_frames(traceback) if traceback else []
    if not frames:
        return text
    digest = hashlib.sha1(
        "|".join(f"{name}:{func}" for name, func in frames).encode(), usedforsecurity=False
    ).hexdigest()[:8]
    return f"{text} [{digest}]"
