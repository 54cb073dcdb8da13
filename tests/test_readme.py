"""The README's examples run as printed and give the figures it shows."""

import re
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def test_worker_quickstart_runs(
    redis_url: str, stream_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = README.read_text()
    section = text.split("## Worker quickstart", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    assert '"redis://localhost:6379/0"' in code
    assert ".run(handle)" in code
    code = code.replace('"redis://localhost:6379/0"', repr(redis_url))
    code = code.replace('"webhook_events"', repr(stream_name))
    code = code.replace(".run(handle)", ".run(handle, burst=True, handle_signals=False)")
    namespace: dict[str, object] = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert "webhook.github.push acme/api attempt 1" in capsys.readouterr().out
    assert namespace["stats"].acked == 1  # type: ignore[attr-defined]


def test_investigating_a_dlq_runs_and_gives_the_printed_figures() -> None:
    section = README.read_text().split("## Investigating a DLQ", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert "EmbeddedServer().start()" in blocks[0]
    namespace: dict[str, Any] = {}
    try:
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
        groups = namespace["groups_to_dataframe"](namespace["client"], "webhooks")
    finally:
        if "server" in namespace:
            namespace["server"].stop()
    df, pending = namespace["df"], namespace["pending"]
    summary = namespace["dlq_summary"](df)
    assert len(df) == 689
    assert summary["count"].tolist() == [405, 147, 137]
    assert [s.rsplit(" [", 1)[0] for s in summary["error_signature"]] == [
        "KeyError: 'release_notes'",
        "ValueError: unknown installation <n> for tenant <str>",
        "TimeoutError: upstream <ip> timed out after <n>s",
    ]
    by_type = namespace["dlq_summary"](df, by=("error_type", "event_type"))
    assert by_type[["error_type", "event_type", "count"]].values.tolist() == [
        ["KeyError", "webhook.github.push", 405],
        ["ValueError", "webhook.github.pull_request", 147],
        ["TimeoutError", "webhook.github.issue_comment", 137],
    ]
    assert namespace["worst"]["attempts"].eq(3).all()
    assert len(pending) == pending.state.value_counts()["dead_consumer"] == 100
    assert groups[["group", "pending", "lag"]].values.tolist() == [
        ["audit", 100, 4900],
        ["billing", 0, 0],
    ]
