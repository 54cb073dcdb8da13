"""The fault suite's ledger: what was produced, what handlers saw, what the DLQ holds.

"Nothing lost" means: every event whose add returned an id is, at the end, handled (at least
once) or in the DLQ exactly once, and nothing is left pending. Duplicates (an event handled
more than once) are allowed, since delivery is at least once, and counted; a DLQ double (one
event dead-lettered twice for the same group) never is.

Handlers in worker processes append each handled id to a `HandledLog` file (one line, flushed
per id, opened in append mode so several processes can share one file); the test collects the
counts at the end and calls `ledger_check`.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["HandledLog", "LedgerResult", "ledger_check", "write_report_row"]


class HandledLog:
    """An append-only file of handled entry ids, shared by worker processes."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def record(self, entry_id: str) -> None:
        """Append one id. O_APPEND keeps each line whole when processes write at once."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, entry_id.encode() + b"\n")
        finally:
            os.close(fd)

    def counts(self) -> Counter[str]:
        """How often each id was handled (a partial last line, from a kill, is ignored)."""
        if not self.path.exists():
            return Counter()
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        # Everything after the last newline was being written when a process died.
        return Counter(line.decode() for line in lines[:-1] if line)


@dataclass(frozen=True)
class LedgerResult:
    """The ledger of one scenario, as the README's and RELIABILITY.md's tables count it."""

    events: int
    handled: int
    duplicated: int
    lost: int
    dlq_doubles: int
    pending: int
    dlq: int
    handled_and_dead: int = 0
    lost_ids: list[str] = field(default_factory=list)
    double_ids: list[str] = field(default_factory=list)

    def assert_nothing_lost(self) -> None:
        """Every event handled or dead-lettered exactly once, and nothing pending."""
        assert self.lost == 0, f"{self.lost} events lost, e.g. {self.lost_ids[:5]}"
        assert self.dlq_doubles == 0, (
            f"{self.dlq_doubles} events dead-lettered twice, e.g. {self.double_ids[:5]}"
        )
        assert self.pending == 0, f"{self.pending} entries still pending"

    def row(self) -> dict[str, Any]:
        """The counts, without the id samples."""
        data = asdict(self)
        data.pop("lost_ids")
        data.pop("double_ids")
        return data


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def ledger_check(
    redis_client: Any,
    stream: str,
    group: str,
    produced: Iterable[str],
    handled: Mapping[str, int],
    *,
    dlq: str | None = None,
) -> LedgerResult:
    """Compare what was produced with what was handled and what the DLQ holds for ``group``.

    ``handled`` maps stream ids to how often a handler saw them (`HandledLog.counts`, or a
    `Counter` built in-process). DLQ entries are matched by ``dlq_source_stream`` and
    ``dlq_source_id``; only those dead-lettered by ``group`` count.
    """
    dlq = dlq or f"{stream}_dlq"
    produced_ids = list(produced)
    dead: Counter[str] = Counter()
    for _, fields in redis_client.xrange(dlq, "-", "+"):
        if _text(fields.get(b"dlq_source_stream", b"")) != stream:
            continue
        if _text(fields.get(b"dlq_group", b"")) != group:
            continue
        dead[_text(fields.get(b"dlq_source_id", b""))] += 1
    try:
        summary = redis_client.xpending(stream, group)
        pending = int(summary["pending"])
    except Exception as exc:  # the group may be gone in some scenarios: report, don't hide
        if "NOGROUP" not in str(exc) and "no such key" not in str(exc):
            raise
        pending = 0
    lost = [i for i in produced_ids if handled.get(i, 0) == 0 and dead[i] == 0]
    doubles = [i for i, n in dead.items() if n > 1]
    return LedgerResult(
        events=len(produced_ids),
        handled=sum(1 for i in produced_ids if handled.get(i, 0) > 0),
        duplicated=sum(max(handled.get(i, 0) - 1, 0) for i in produced_ids),
        lost=len(lost),
        dlq_doubles=len(doubles),
        pending=pending,
        dlq=sum(dead.values()),
        handled_and_dead=sum(1 for i in produced_ids if handled.get(i, 0) and dead[i]),
        lost_ids=lost,
        double_ids=doubles,
    )


def write_report_row(path: Path | str, row: Mapping[str, Any]) -> None:
    """Append one scenario's row (JSON) to the report file that `report.py` turns into a table."""
    with Path(path).open("a") as out:
        out.write(json.dumps(dict(row), default=str) + "\n")
