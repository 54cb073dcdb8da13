"""The notebooks run top to bottom on a fresh kernel, and say what they should.

Each is executed with nbclient: once as a new user runs it (no ``REDIS_URL``: the notebook
starts its own embedded server) and, for the quickstart, against the suite's server through
``REDIS_URL`` (it must then leave nothing behind). A check cell appended by the test asserts
the notebook's key results from its own variables. Committed notebooks carry no outputs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import nbformat
import pytest
import redis
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

CHECKS = {
    "quickstart": """
import json
assert stats.dead_lettered > 0 and stats.dead_lettered == len(selection)
assert len(report.replayed) == len(selection) and not report.failed
assert (outcome["state"] == "acked").all()
print(json.dumps({"dead_lettered": stats.dead_lettered, "stream": stream}))
""",
    "dlq_investigation": """
import json
assert set(dlq_summary(dlq)["error_type"]) == {"LookupError", "UpstreamTimeout"}
assert set(bug["tenant_id"].astype(str)) == {"tenant-003"}
assert (trial["outcome"] == "ok").all()
assert len(report.replayed) == len(bug)
assert len(outage.replayed) == (dlq["error_type"] == "UpstreamTimeout").sum()
assert (outcome["state"] == "acked").all() and len(outcome) == len(dlq)
assert client.redis.xlen(incident.dlq) == 0
print(json.dumps({"dlq": len(dlq), "replayed": len(outcome), "plot": ax.get_title()}))
""",
}


def run(name: str, env: dict[str, str]) -> tuple[Any, dict[str, Any]]:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    # The check runs before the last cell, which stops the notebook's server.
    nb.cells.insert(len(nb.cells) - 1, nbformat.v4.new_code_cell(CHECKS[name]))
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute(env=env)
    check = nb.cells[-2].outputs[-1]
    return nb, json.loads(check["text"])


def kernel_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    return {**env, "MPLBACKEND": "Agg", **extra}


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_committed_notebooks_have_no_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    assert path.stem in CHECKS  # every notebook is executed below


def test_quickstart_on_its_own_embedded_server() -> None:
    nb, result = run("quickstart", kernel_env())
    assert result["dead_lettered"] > 0
    errors = [o for cell in nb.cells for o in cell.get("outputs", []) if o.output_type == "error"]
    assert errors == []


def test_investigation_replays_every_dead_letter_and_proves_it() -> None:
    nb, result = run("dlq_investigation", kernel_env())
    assert result["replayed"] == result["dlq"] > 0
    assert result["plot"].startswith("Dead letters over time by error_signature")
    errors = [o for cell in nb.cells for o in cell.get("outputs", []) if o.output_type == "error"]
    assert errors == []


def test_quickstart_on_redis_url_leaves_nothing_behind(
    redis_url: str, redis_client: redis.Redis
) -> None:
    before = set(redis_client.keys("quickstart:*"))
    _, result = run("quickstart", kernel_env(REDIS_URL=redis_url))
    assert result["stream"].startswith("quickstart:")
    assert set(redis_client.keys("quickstart:*")) == before
