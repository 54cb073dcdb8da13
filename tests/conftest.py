from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from faults.ledger import LedgerResult, write_report_row

pytest_plugins = ["streamlab.testing"]

FaultReport = Callable[..., None]


@pytest.fixture
def fault_report(request: pytest.FixtureRequest) -> FaultReport:
    """Record a fault scenario's ledger for docs/RELIABILITY.md, then assert nothing was lost.

    ``fault_report(scenario="...", fault="...", result=ledger, client=redis_client)``: the row is
    appended to ``$STREAMLAB_FAULT_REPORT`` when that is set (``python tests/faults/report.py``
    turns the file into the table); ``expect_lost=True`` records a scenario whose losses are the
    point of the row (asynchronous replication) and skips the assertion.
    """

    def record(
        *,
        scenario: str,
        fault: str,
        result: LedgerResult,
        client: Any = None,
        expect_lost: bool = False,
        note: str = "",
    ) -> None:
        server = ""
        if client is not None:
            info = client.info("server")
            if isinstance(info, dict) and info and not any(k in info for k in ("redis_version",)):
                info = next(iter(info.values()))  # a cluster client answers per node
            name = "valkey" if "valkey_version" in info else "redis"
            server = f"{name} {info.get('valkey_version') or info.get('redis_version')}"
        command = f"pytest '{request.node.nodeid}'"
        if request.node.get_closest_marker("slow"):
            command = command.replace("pytest ", "pytest -m slow ", 1)
        if server.startswith("valkey"):
            command = f"STREAMLAB_SERVER=valkey {command}"
        ok = expect_lost or (result.lost == 0 and result.dlq_doubles == 0 and result.pending == 0)
        path = os.environ.get("STREAMLAB_FAULT_REPORT")
        if path:
            write_report_row(
                path,
                {
                    "scenario": scenario,
                    "fault": fault,
                    "server": server,
                    **result.row(),
                    # A loss the scenario exists to show (asynchronous replication) is not a pass.
                    "result": "FAIL" if not ok else "loss expected" if result.lost else "pass",
                    "note": note,
                    "command": command,
                },
            )
        if not expect_lost:
            result.assert_nothing_lost()

    return record
