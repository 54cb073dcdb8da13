"""Turn a fault-suite report (JSON lines written by the ``fault_report`` fixture) into the
Markdown table of docs/RELIABILITY.md.

    STREAMLAB_FAULT_REPORT=/tmp/faults.jsonl .venv/bin/pytest -m 'fault or not fault'
    python tests/faults/report.py /tmp/faults.jsonl
"""

from __future__ import annotations

import json
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


def main(path: str) -> None:
    with open(path) as lines:
        rows = [json.loads(line) for line in lines if line.strip()]
    rows.sort(key=lambda r: (r["scenario"], r["server"]))
    print("| " + " | ".join(title for _, title in COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for row in rows:
        cells = []
        for key, _ in COLUMNS:
            value = row.get(key, "")
            text = f"`{value}`" if key == "command" else str(value)
            if key == "result" and row.get("note"):
                text += f" ({row['note']})"
            cells.append(text.replace("|", "\\|"))
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
