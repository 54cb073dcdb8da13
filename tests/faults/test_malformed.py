"""Scenario 6: malformed entries, written by some other service, reach a worker process.

Bad JSON, missing and wrongly typed fields, 1 MB payloads, bytes that are not UTF-8 (in values
and in field names) and an entry of 5,000 fields: each is handled or reaches the DLQ byte for
byte, no worker dies, and no error text quotes a field's value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis

from faults.common import GROUP, FaultReport, handled, spawn
from faults.ledger import ledger_check

pytestmark = pytest.mark.fault

SECRET = "SECRET-VALUE-7731"

MALFORMED: dict[str, dict[Any, Any]] = {
    "bad json payload": {"event_type": "push", "payload": "{" + SECRET},
    "payload not an object": {"event_type": "push", "payload": json.dumps([SECRET])},
    "bad auth_context": {"event_type": "push", "auth_context": "{" + SECRET},
    "retry_count not a number": {"event_type": "push", "retry_count": SECRET},
    "retry_count past 64 bits": {"event_type": "push", "retry_count": str(2**63)},
    "timestamp not a time": {"event_type": "push", "timestamp": SECRET},
    "no known field": {"foo": SECRET},
    "only event_type": {"event_type": "push"},
    "1 MB payload": {"event_type": "push", "payload": json.dumps({"blob": "x" * 1_000_000})},
    "1 MB bad payload": {"event_type": "push", "payload": "{" + "x" * 1_000_000},
    "binary value": {"event_type": b"\xff\xfe" + SECRET.encode(), "payload": b"\x00\xff\x80"},
    "binary field name": {b"\xff\xfename": SECRET, "event_type": "push"},
    "binary payload": {"event_type": "push", "payload": b"\x80" + SECRET.encode()},
    "5,000 fields": {f"f{i}": f"v{i}" for i in range(5000)},
    "5,000 fields, bad payload": {
        "payload": "{" + SECRET,
        **{f"f{i}": f"v{i}" for i in range(5000)},
    },
}


def test_malformed_entries_are_handled_or_dead_lettered_and_kill_no_worker(
    redis_url: str,
    redis_client: redis.Redis,
    stream_name: str,
    tmp_path: Path,
    fault_report: FaultReport,
) -> None:
    r = redis_client
    r.xgroup_create(stream_name, GROUP, id="0", mkstream=True)
    ids = {name: r.xadd(stream_name, fields).decode() for name, fields in MALFORMED.items()}
    out = tmp_path / "handled"
    args = ["--out", str(out), "--sleep", "0", "--burst", "--batch-size", "4"]
    # Two workers one after the other: the second finds nothing the first left behind.
    for name in ("w1", "w2"):
        worker = spawn(redis_url, stream_name, name, "slow", *args)
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err[-2000:]

    result = ledger_check(r, stream_name, GROUP, ids.values(), handled(out))
    dead = {f[b"dlq_source_id"].decode(): f for _, f in r.xrange(f"{stream_name}_dlq", "-", "+")}
    by_id = {entry_id: name for name, entry_id in ids.items()}
    # What decodes is handled (a payload may be any JSON value, a retry_count any integer);
    # what does not, or has no event_type, is dead-lettered at once.
    assert {by_id[i] for i in dead} == {
        "bad json payload",
        "bad auth_context",
        "retry_count not a number",
        "timestamp not a time",
        "no known field",
        "5,000 fields",
        "1 MB bad payload",
        "binary value",
        "binary payload",
        "5,000 fields, bad payload",
    }
    for entry_id, fields in dead.items():
        original = {k: v for k, v in fields.items() if not k.startswith(b"dlq_")}
        [(_, source)] = r.xrange(stream_name, entry_id, entry_id)
        assert original == source, by_id[entry_id]  # byte for byte
        assert fields[b"dlq_error_type"] == b"DecodeError"
        for name in (b"dlq_error", b"dlq_traceback"):
            assert SECRET.encode() not in fields.get(name, b""), (by_id[entry_id], name)
    fault_report(
        scenario="6 malformed entries",
        fault="bad JSON, missing/wrongly typed fields, 1 MB payloads, non-UTF-8 bytes, "
        "5,000 fields",
        result=result,
        client=r,
        note=f"{result.dlq} dead-lettered as DecodeError, {result.handled} handled",
    )
