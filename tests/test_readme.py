"""The README's worker quickstart runs as printed (on the test server, in burst mode)."""

import re
from pathlib import Path

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
