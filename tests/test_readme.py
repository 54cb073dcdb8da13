"""The README's examples run as printed and give the figures it shows."""

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from streamlab.client import RedisStreamsClient
from streamlab.consumer import Consumer, ConsumerConfig
from streamlab.events import StreamEvent, StreamMessage

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(heading: str) -> list[str]:
    """The ```python blocks of the README section under ``## heading``, in order."""
    section = README.read_text().split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_worker_quickstart_runs(
    redis_url: str, stream_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = python_blocks("Worker quickstart")[0]
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
    blocks = python_blocks("Investigating a DLQ")
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
        "TimeoutError: upstream <ip> timed out after <duration>",
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


def test_replaying_dlq_events_runs_as_printed(
    streams_client: RedisStreamsClient,
    redis_url: str,
    stream_name: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    main, notebook = python_blocks("Replaying DLQ events")
    assert main.count('"redis://localhost:6379/0"') == main.count('"{webhook_events}"') == 1
    main = main.replace('"redis://localhost:6379/0"', repr(redis_url))
    main = main.replace('"{webhook_events}"', repr(stream_name))

    # A DLQ as a real consumer leaves it: pushes timed out, issues and pull requests broke.
    failures = {
        "webhook.github.push": TimeoutError,
        "webhook.github.issues": KeyError,
        "webhook.github.pull_request": ValueError,
    }
    kinds = ["webhook.github.push"] * 6 + ["webhook.github.issues"] * 4
    kinds += ["webhook.github.pull_request"] * 2
    streams_client.add_many(
        stream_name,
        [StreamEvent(id=f"evt-{n}", event_type=k, payload={"n": n}) for n, k in enumerate(kinds)],
    )

    def failing(msg: StreamMessage) -> None:
        assert msg.event is not None
        raise failures[msg.event.event_type](f"{msg.event.id} failed")

    handled: list[str] = []

    def handle_webhook(msg: StreamMessage) -> None:  # the fixed handler
        assert msg.event is not None
        handled.append(msg.event.id)

    def billing() -> Consumer:
        config = ConsumerConfig(
            stream=stream_name,
            group="billing",
            consumer="billing-1",
            block_duration=timedelta(milliseconds=50),
            max_retries=0,
        )
        return Consumer(streams_client, config)

    assert billing().run(failing, burst=True, handle_signals=False).dead_lettered == 12
    pushes = [
        m.id
        for m in streams_client.read_dlq(stream_name)
        if m.failure and m.failure.error_type == "TimeoutError"
    ]

    namespace: dict[str, Any] = {"handle_webhook": handle_webhook}
    exec(compile(main, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "ReplaySelection: 6 entries" in out
    assert "DRY RUN, nothing written" in out
    assert "6 would replay, 0 skipped, 0 failed" in out
    report = namespace["report"]
    assert report.replayed == pushes
    assert report.skipped == {}
    assert all(report.mapping.values())
    pushed = [f"evt-{n}" for n in range(6)]
    assert handled == pushed  # by try_handler, in-process

    def readme_value(start: str) -> dict[str, int]:
        """The value of the README's expression line starting with ``start``, as counts."""
        line = next(ln for ln in main.splitlines() if ln.startswith(start))
        counts = eval(line.split("#", 1)[0], namespace)
        return {k: n for k, n in counts.to_dict().items() if n}

    assert readme_value("sl.try_handler(") == {"ok": 6}
    assert readme_value("sl.replay_outcome(") == {"waiting": 6}
    handled.clear()
    stats = billing().run(handle_webhook, burst=True, handle_signals=False)
    assert stats.acked == 6
    assert sorted(handled) == pushed
    assert readme_value("sl.replay_outcome(") == {"acked": 6}

    # The notebook block: the biggest group of what is left (the KeyErrors), dry-run.
    exec(compile(notebook, str(README), "exec"), namespace)
    left = {m.id: m.failure.error_type for m in streams_client.read_dlq(stream_name) if m.failure}
    assert namespace["sel"].ids == [i for i, error in left.items() if error == "KeyError"]
    assert len(namespace["sel"]) == 4
    namespace["client"].redis.close()
