"""Error signatures: variable parts normalised away, traceback frames hashed (no Redis)."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from streamlab.signatures import error_signature, normalise_error, traceback_frames

TB = """Traceback (most recent call last):
  File "/srv/app/.venv/lib/streamlab/consumer.py", line 210, in _handle
    handler(message)
  File "/srv/app/handlers.py", line {line}, in {func}
    raise KeyError(key)
KeyError: 'x'
"""


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("order 4411 not found", "order <n> not found"),
        ("user 'alice' has no role \"admin\"", "user <str> has no role <str>"),
        ("event 0b6f9c52-1e2f-4c1a-9d7e-0a1b2c3d4e5f rejected", "event <uuid> rejected"),
        ("entry 1795838476493-12 missing", "entry <id> missing"),
        ("object at 0x7f3a2b1c0d90 is closed", "object at <hex> is closed"),
        ("commit 9fceb02d0ae598e95dc970b74767f19372d61af8 unknown", "commit <hex> unknown"),
        ("connect to 10.0.3.17:443 failed", "connect to <ip> failed"),
        ("GET https://api.github.com/repos/x?page=2 gave 502", "GET <url> gave <n>"),
        ("mail bob@example.com bounced", "mail <email> bounced"),
        ("took 5.25s,   retrying\n now", "took <duration>, retrying now"),
    ],
)
def test_normalise_error(error: str, expected: str) -> None:
    assert normalise_error(error) == expected


def test_same_bug_same_signature_different_bug_differs() -> None:
    one = error_signature("order 1 not found for 'acme'", TB.format(line=7, func="load"))
    two = error_signature("order 2 not found for 'globex'", TB.format(line=9, func="load"))
    other = error_signature("order 2 not found for 'globex'", TB.format(line=9, func="save"))
    assert one == two
    assert one.startswith("order <n> not found for <str> [")
    assert one != other
    assert error_signature("order 1 not found") == "order <n> not found"


def test_key_only_messages_and_fallback() -> None:
    assert error_signature("KeyError: 'release_notes'") == "KeyError: 'release_notes'"
    assert error_signature("'release_notes'") == "'release_notes'"
    assert error_signature("", "Traceback...\nValueError: bad 42\n") == "ValueError: bad <n>"
    assert len(error_signature("x" * 1000)) == 200


def test_traceback_frames() -> None:
    assert traceback_frames(TB.format(line=7, func="load")) == [
        ("consumer.py", "_handle"),
        ("handlers.py", "load"),
    ]
    assert traceback_frames("no frames here") == []


def test_data_keys_ipv6_and_short_shas_fold() -> None:
    # A missing key that is data (an id) folds; a missing key that is a name stays.
    assert error_signature("KeyError: 'evt-0-00000012'") == error_signature(
        "KeyError: 'evt-7-00000913'"
    )
    assert error_signature("KeyError: 'evt-0-00000012'") == "KeyError: 'evt-<n>-<n>'"
    assert error_signature("KeyError: '1795839300822-0'") == "KeyError: '<id>'"
    assert error_signature("ValueError: 'a9f3c2d1e0b4'") == "ValueError: '<hex>'"
    assert error_signature("KeyError: 'v2_field'") == "KeyError: 'v2_field'"
    assert normalise_error("connect to 2001:db8::1 failed") == "connect to <ip> failed"
    assert normalise_error("dial [fe80::1]:6379: refused") == "dial <ip>: refused"
    assert normalise_error("::1 refused") == "<ip> refused"
    assert normalise_error("Foo::bar at 12:30:45") == "Foo::bar at <time>"
    assert normalise_error("bad commit 1a2b3c4") == "bad commit <hex>"
    assert normalise_error("offset -5 of x-1") == "offset <n> of x-<n>"


# --- Signatures on real webhook bodies ------------------------------------------------------
# One handler bug fails many events; what differs between them (times at any hour, SHAs of any
# length including GitHub's all-zero one, node ids, owner/repo, refs, numbers) is data.

GITHUB = Path(__file__).resolve().parent.parent / "fixtures" / "github"
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})$")
_NODE = re.compile(r"^(?:[A-Z]{1,4}_k[a-z][A-Z]{2}|MD)")


def _vary(body: Any, rng: random.Random) -> Any:
    """The same webhook for another repository, commit, object and moment."""
    if isinstance(body, dict):
        return {k: _vary(v, rng) for k, v in body.items()}
    if isinstance(body, list):
        return [_vary(v, rng) for v in body]
    if isinstance(body, bool) or body is None:
        return body
    if isinstance(body, int):
        return rng.randint(1, 10 ** rng.randint(1, 11))
    if not isinstance(body, str):
        return body
    if re.fullmatch(r"0{40}", body):
        return body
    if re.fullmatch(r"[0-9a-f]{40}", body):
        return rng.randbytes(20).hex()
    if _ISO.match(body):
        moment = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randint(0, 330 * 86400))
        return moment.isoformat().replace("+00:00", rng.choice(("Z", "+00:00", ".123Z")))
    if _NODE.match(body):
        head = body.split("_k", 1)[0] + "_kwDO" if "_k" in body else "MDQ6"
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
        return head + "".join(rng.choice(alphabet) for _ in range(rng.randint(8, 16)))
    if re.fullmatch(r"[\w-]+/[\w.-]+", body):
        return f"{rng.choice(('acme', 'Globex-Corp', 'initech'))}/{rng.choice(('api', 'web.js'))}"
    if body.startswith("refs/heads/"):
        return f"refs/heads/{rng.choice(('main', 'feature/retry-budget', 'fix/x-1'))}"
    return body


def _bugs() -> dict[str, Callable[[dict[str, Any]], str]]:
    """What handlers raise, built from the body (each a different bug)."""
    return {
        "push_create_branch": lambda b: (
            f"cannot diff {b['before']}..{b['after'][:7]} on {b['ref']} of "
            f"{b['repository']['full_name']}: base missing since {b['head_commit']['timestamp']}"
        ),
        "push_delete_branch": lambda b: (
            f"delete of {b['ref']} at {b['after']} in {b['repository']['full_name']} "
            f"({b['repository']['node_id']}) rejected"
        ),
        "push": lambda b: (
            f"commit {b['after']} (tree {b['commits'][0]['tree_id'][:12]}) of "
            f"{b['repository']['full_name']} not indexed after 30.5s"
        ),
        "pull_request_opened": lambda b: (
            f"pull request {b['pull_request']['node_id']} #{b['number']} updated_at "
            f"{b['pull_request']['updated_at']} older than cached {b['pull_request']['created_at']}"
        ),
        "pull_request_merged": lambda b: (
            f"merge commit {b['pull_request']['merge_commit_sha']} of "
            f"{b['pull_request']['head']['label']} missing; retry in 2m30s"
        ),
        "issues_opened": lambda b: (
            f"label sync failed for {b['issue']['node_id']} ({b['repository']['full_name']}#"
            f"{b['issue']['number']}) at {b['issue']['created_at']}"
        ),
        "issue_comment_created": lambda b: (
            f"comment {b['comment']['id']} by {b['comment']['user']['node_id']} "
            f"at {b['comment']['created_at']}: rate limited until 14:05:00 UTC"
        ),
        "release_published": lambda b: (
            f"release {b['release']['node_id']} published {b['release']['published_at']} "
            f"outside the freeze window"
        ),
        "installation_created": lambda b: (
            f"installation {b['installation']['id']} ({b['installation']['node_id']}) for "
            f"{b['repositories'][0]['full_name']} not accessible since "
            f"{b['installation']['created_at']}"
        ),
        "workflow_run_completed": lambda b: (
            f"run {b['workflow_run']['id']} head_sha {b['workflow_run']['head_sha']} of "
            f"{b['repository']['full_name']} took {b['workflow_run']['run_number']} seconds"
        ),
    }


def test_github_webhooks_one_bug_is_one_signature() -> None:
    rng = random.Random(7)
    signatures = {}
    for name, bug in _bugs().items():
        body = json.loads((GITHUB / f"{name}.json").read_text())
        seen = {
            error_signature(bug(_vary(body, rng)), TB.format(line=3, func=f"on_{name}"))
            for _ in range(200)
        }
        assert len(seen) == 1, (name, sorted(seen)[:4])
        (signature,) = seen
        # What names the bug stays readable: no placeholder ate the words.
        assert re.search(r"[a-z]{4,}", signature), signature
        signatures[name] = signature
    assert len(set(signatures.values())) == len(signatures)  # different bugs stay apart
    assert signatures["push_create_branch"].startswith(
        "cannot diff <hex>..<hex> on <ref> of <repo>: base missing since <time> ["
    )


def test_github_all_zero_sha_and_times_at_every_hour_fold() -> None:
    zero, real = "0" * 40, "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"
    assert normalise_error(f"before {zero} after {real}") == "before <hex> after <hex>"
    hours = {normalise_error(f"pushed at 2026-11-30T{h:02d}:07:41Z") for h in range(24)}
    assert hours == {"pushed at <time>"}
    nodes = "node PR_kwDOABPHjc5sww2K, MDQ6VXNlcjU4MzIzMQ=="
    assert normalise_error(nodes) == "node <node>, <node>"
    assert normalise_error("ttl 1h30m0s, waited 300ms, PT5M, 30 seconds") == (
        "ttl <duration>, waited <duration>, <duration>, <duration>"
    )
    # Words with a slash and MIME types are not repositories; a full ref is one placeholder.
    assert normalise_error("[Errno 5] Input/output error") == "[Errno <n>] Input/output error"
    assert normalise_error("want application/json") == "want application/json"
    assert normalise_error("no refs/heads/feature/retry-budget") == "no <ref>"
    assert normalise_error("Date: Mon, 30 Nov 2026 14:07:41 GMT") == "Date: <time>"
