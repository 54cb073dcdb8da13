"""Realistic, deterministic webhook events for the demo, notebooks, tests and benchmarks.

Payloads are GitHub webhook bodies from ``fixtures/webhooks`` (shipped in the wheel as
``streamlab/_fixtures/webhooks``) with repository, sender, refs and ids varied per event.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from streamlab.events import AuthContext, StreamEvent
from streamlab.records import format_time

__all__ = ["EVENT_TYPES", "REPOSITORIES", "TENANTS", "platform_entries", "sample_events"]

# GitHub event name -> share of traffic (pushes and PR updates dominate real webhook streams).
_MIX = {
    "push": 40,
    "pull_request": 25,
    "issue_comment": 15,
    "issues": 10,
    "workflow_run": 7,
    "release": 3,
}
EVENT_TYPES = tuple(f"webhook.github.{name}" for name in _MIX)
TENANTS = tuple(f"tenant-{i:03d}" for i in range(1, 9))
_ORGS = ("acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka")
_PROJECTS = ("api", "web", "billing", "auth", "infra", "mobile")
REPOSITORIES = tuple(f"{org}/{project}" for org in _ORGS for project in _PROJECTS)
_USERS = ("octocat", "mona", "hubot", "defunkt", "mojombo", "pjhyett", "wycats", "ezmobius")
_BRANCHES = ("main", "develop", "feature/retry-budget", "fix/session-race", "release/2.4")


def _fixture_dir() -> Path:
    packaged = resources.files("streamlab") / "_fixtures" / "webhooks"
    if packaged.is_dir():
        return Path(str(packaged))
    # Editable install / source checkout: the repository's top-level fixtures folder.
    return Path(__file__).resolve().parent.parent / "fixtures" / "webhooks"


@cache
def _templates() -> dict[str, str]:
    folder = _fixture_dir()
    return {name: (folder / f"{name}.json").read_text() for name in _MIX}


def _sha(rng: random.Random) -> str:
    return hashlib.sha1(rng.randbytes(8), usedforsecurity=False).hexdigest()


def _payload(kind: str, repo: str, tenant_index: int, rng: random.Random) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(_templates()[kind])
    user = rng.choice(_USERS)
    body["repository"]["full_name"] = repo
    body["repository"]["id"] = 1_000_000 + REPOSITORIES.index(repo)
    body["sender"] = {"login": user, "id": 10_000 + _USERS.index(user), "type": "User"}
    if kind == "push":
        body["ref"] = f"refs/heads/{rng.choice(_BRANCHES)}"
        body["before"], body["after"] = _sha(rng), _sha(rng)
        body["head_commit"]["id"] = body["after"]
    elif kind == "pull_request":
        body["action"] = rng.choice(("opened", "synchronize", "closed", "reopened"))
        body["number"] = body["pull_request"]["number"] = rng.randint(1, 5000)
        body["pull_request"]["head"]["sha"] = _sha(rng)
    elif kind in ("issues", "issue_comment"):
        body["issue"]["number"] = rng.randint(1, 5000)
    elif kind == "workflow_run":
        body["workflow_run"]["conclusion"] = rng.choice(("success", "success", "failure"))
        body["workflow_run"]["head_sha"] = _sha(rng)
    body["installation"] = {"id": 40_000 + tenant_index}
    return body


def sample_events(
    n: int, *, seed: int = 0, start: datetime | None = None, spacing: timedelta | None = None
) -> Iterator[StreamEvent]:
    """``n`` webhook events, the same for the same ``seed``.

    Event ``i`` is timestamped ``start + i * spacing`` (default: one hour ago, 10 ms apart).
    Each tenant owns a fixed set of repositories, as on a real multi-tenant platform.
    """
    rng = random.Random(seed)
    kinds = list(_MIX)
    weights = list(_MIX.values())
    begin = start or datetime.now(UTC) - timedelta(hours=1)
    step = spacing or timedelta(milliseconds=10)
    for i in range(n):
        kind = rng.choices(kinds, weights)[0]
        repo = rng.choice(REPOSITORIES)
        tenant_index = _ORGS.index(repo.split("/", 1)[0])
        tenant = TENANTS[tenant_index]
        yield StreamEvent(
            id=f"evt-{seed}-{i:08d}",
            event_type=f"webhook.github.{kind}",
            repository=repo,
            tenant_id=tenant,
            payload=_payload(kind, repo, tenant_index, rng),
            auth_context=AuthContext(
                tenant_id=tenant,
                principal_id=f"app-{tenant_index}",
                principal_type="github_app",
                installation_id=40_000 + tenant_index,
                app_id=9_000 + tenant_index,
                permissions=["contents:read", "pull_requests:write"],
            ),
            timestamp=begin + i * step,
        )


def platform_entries(n: int, *, seed: int = 0) -> Iterator[dict[str, str]]:
    """Raw entry fields as the platform's other services write them.

    Field names differ from streamlab's (``event_id``, ``repo_name``, ``sender_name``), there is
    no ``tenant_id`` field (it is inside ``auth_context``) and a ``metadata`` JSON field is added.
    """
    for event in sample_events(n, seed=seed):
        yield {
            "event_id": event.id,
            "event_type": event.event_type,
            "repo_name": event.repository,
            "sender_name": str(event.payload["sender"]["login"]),
            "payload": json.dumps(event.payload),
            "auth_context": event.auth_context.model_dump_json() if event.auth_context else "{}",
            "timestamp": format_time(event.timestamp),
            "metadata": json.dumps({"delivery": event.id, "source": "github", "attempt": 1}),
        }
