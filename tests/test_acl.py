"""Least privilege (fault scenario 12): each role works with exactly the README's ACL rule,
and a missing right is a clear error naming the command, with nothing half-written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import FaultReport
from faults.ledger import HandledLog, ledger_check
from prometheus_client import CollectorRegistry, generate_latest

from streamlab.backoff import Backoff
from streamlab.client import RedisStreamsClient, connect
from streamlab.consumer import Consumer, ConsumerConfig
from streamlab.embedded import EmbeddedServer
from streamlab.errors import PermissionDeniedError, Reject
from streamlab.events import StreamEvent, StreamMessage, encode_event
from streamlab.frames import (
    consumers_to_dataframe,
    dlq_to_dataframe,
    groups_to_dataframe,
    pending_to_dataframe,
    stream_to_dataframe,
)
from streamlab.keys import retry_due_key
from streamlab.metrics import PrometheusMetrics
from streamlab.policy import RETRY_CONSUMER
from streamlab.records import Failure
from streamlab.replay import replay_dlq, replay_outcome, select_dlq

README = Path(__file__).resolve().parent.parent / "README.md"
STREAM = "{webhook_events}"  # the README's key pattern is ~{webhook_events}*
GROUP = "g"
# An entry this large cannot pass through a Lua call: it takes the WATCH/MULTI path.
BIG_FIELDS = 4000


def readme_rule(role: str) -> list[str]:
    """The README's ``ACL SETUSER <role> ...`` rule, as arguments after the user name."""
    section = README.read_text().split("## Least privilege\n", 1)[1].split("\n## ", 1)[0]
    line = re.search(rf"^ACL SETUSER {role} (.+)$", section, re.M)
    assert line, f"no rule for {role} in the README's Least privilege section"
    return line[1].split()


def create_user(admin: redis.Redis, role: str, *, drop: str | None = None) -> str:
    """Create ``role`` with the README's rule (minus the right ``drop``); return its URL part."""
    rule = [a.replace(">PASSWORD", f">{role}-pw") for a in readme_rule(role)]
    if drop is not None:
        assert f"+{drop}" in rule or "+@stream" in rule, (drop, rule)
        rule = [a for a in rule if a != f"+{drop}"]
        if f"+{drop}" not in readme_rule(role):  # a command of a category: take it back
            rule.append(f"-{drop}")
    admin.execute_command("ACL", "SETUSER", role, *rule)
    return f"{role}:{role}-pw"


def user_client(server: EmbeddedServer, userinfo: str) -> RedisStreamsClient:
    return RedisStreamsClient(connect(f"redis://{userinfo}@127.0.0.1:{server.port}/0"))


def seed_events(admin: redis.Redis, n: int = 12) -> list[str]:
    """``n`` sample events and one of `BIG_FIELDS` fields, added by the admin."""
    client = RedisStreamsClient(admin)
    ids = client.add_many(STREAM, (StreamEvent(event_type="push") for _ in range(n)))
    big = {**encode_event(StreamEvent(event_type="big"))} | {
        f"x{i}": "v" for i in range(BIG_FIELDS)
    }
    ids.append(client.add_to_stream(STREAM, big))
    return ids


def worker_run(
    client: RedisStreamsClient, log: HandledLog, poison: set[str], flaky: set[str]
) -> Any:
    seen: set[str] = set()

    def handler(msg: StreamMessage) -> None:
        if msg.id in poison:
            raise Reject("poison")
        if msg.id in flaky and msg.id not in seen:
            seen.add(msg.id)
            raise RuntimeError("transient")
        log.record(msg.id)

    registry = CollectorRegistry()
    config = ConsumerConfig(
        stream=STREAM,
        group=GROUP,
        consumer="w1",
        claim_min_idle=timedelta(seconds=5),
        backoff=Backoff(initial=timedelta(milliseconds=50)),
        dlq_retention=timedelta(days=1),
    )
    consumer = Consumer(client, config, metrics=PrometheusMetrics(registry))
    stats = consumer.run(handler, burst=True, handle_signals=False)
    return stats, generate_latest(registry).decode()


@pytest.mark.fault
def test_worker_role_runs_with_exactly_its_rule(
    private_server: EmbeddedServer, tmp_path: Path, fault_report: FaultReport
) -> None:
    admin = private_server.client()
    userinfo = create_user(admin, "worker")
    ids = seed_events(admin)
    RedisStreamsClient(admin).ensure_group(STREAM, GROUP)
    # A dead consumer holds two entries, idle for ten minutes: the worker reclaims them.
    admin.xreadgroup(GROUP, "dead", {STREAM: ">"}, count=2)
    admin.xclaim(STREAM, GROUP, "dead", 0, ids[:2], idle=600_000, justid=True)
    poison = {ids[2], ids[3], ids[-1]}  # the big one too: dead-lettered by transaction
    log = HandledLog(tmp_path / "handled.log")

    worker = user_client(private_server, userinfo)
    stats, metrics = worker_run(worker, log, poison, flaky={ids[4], ids[5]})
    produced = worker.add_to_stream(STREAM, StreamEvent(event_type="after"))
    stats2, _ = worker_run(worker, log, poison, flaky=set())

    assert (stats.dead_lettered, stats.retried, stats.reclaimed) == (3, 2, 2)
    assert stats2.acked == 1
    assert f'queue_consumer_lag{{group="{GROUP}",stream="{STREAM}"}} 0.0' in metrics
    result = ledger_check(admin, STREAM, GROUP, [*ids, produced], log.counts())
    assert (result.handled, result.dlq) == (len(ids) + 1 - 3, 3)
    fault_report(
        scenario="12 ACL roles: worker",
        fault="worker runs as an ACL user with exactly the README rule",
        result=result,
        client=admin,
    )


def dead_letter_all(admin: redis.Redis, ids: list[str]) -> None:
    cfg = ConsumerConfig(stream=STREAM, group=GROUP, consumer="w0")

    def reject(msg: StreamMessage) -> None:
        raise Reject("bad")

    Consumer(RedisStreamsClient(admin), cfg).run(reject, burst=True, handle_signals=False)
    assert admin.xlen(f"{STREAM}_dlq") == len(ids)


def drain(admin: redis.Redis, log: HandledLog) -> None:
    cfg = ConsumerConfig(stream=STREAM, group=GROUP, consumer="w2")

    def handle(msg: StreamMessage) -> None:
        log.record(msg.fields["streamlab:replay_of"].decode())

    Consumer(RedisStreamsClient(admin), cfg).run(handle, burst=True, handle_signals=False)


@pytest.mark.fault
def test_replayer_role_runs_with_exactly_its_rule(
    private_server: EmbeddedServer, tmp_path: Path, fault_report: FaultReport
) -> None:
    admin = private_server.client()
    userinfo = create_user(admin, "replayer")
    ids = seed_events(admin, 8)
    dead_letter_all(admin, ids)
    dlq_ids = [i.decode() for i, _ in admin.xrange(f"{STREAM}_dlq")]

    replayer = user_client(private_server, userinfo)
    dry = replay_dlq(replayer, STREAM, select_dlq(replayer, STREAM), dry_run=True)
    assert (dry.replayed, dry.failed) == (dlq_ids, {})
    kept = replay_dlq(replayer, STREAM, select_dlq(replayer, STREAM, limit=1), keep_in_dlq=True)
    assert kept.replayed == dlq_ids[:1]
    rest = replay_dlq(replayer, STREAM)
    assert rest.replayed == dlq_ids[1:]  # the big entry too, by transaction
    assert list(rest.skipped) == dlq_ids[:1]  # kept and marked: not replayed twice
    assert admin.ttl(f"{STREAM}_dlq:replay:{rest.replay_id}") > 0

    log = HandledLog(tmp_path / "handled.log")
    drain(admin, log)
    result = ledger_check(admin, STREAM, GROUP, dlq_ids, log.counts())
    assert (result.handled, result.duplicated, result.pending) == (len(dlq_ids), 0, 0)
    fault_report(
        scenario="12 ACL roles: replayer",
        fault="replay runs as an ACL user with exactly the README rule",
        result=result,
        client=admin,
        note="events are DLQ ids; handled = replayed and consumed",
    )


def streamlab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamlab.cli", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


@pytest.mark.fault
def test_investigator_role_reads_everything_and_writes_nothing(
    private_server: EmbeddedServer, tmp_path: Path, fault_report: FaultReport
) -> None:
    admin = private_server.client()
    userinfo = create_user(admin, "investigator")
    ids = seed_events(admin, 10)
    log = HandledLog(tmp_path / "handled.log")
    poison = set(ids[:4])
    worker_run(RedisStreamsClient(admin), log, poison, flaky=set())
    result = ledger_check(admin, STREAM, GROUP, ids, log.counts())
    report = replay_dlq(RedisStreamsClient(admin), STREAM, ids=None, limit=2)
    admin.xreadgroup(GROUP, "w9", {STREAM: ">"}, count=1)  # one replayed event pending

    nosy = user_client(private_server, userinfo)
    assert len(stream_to_dataframe(nosy, STREAM)) == len(ids) + 2
    assert len(dlq_to_dataframe(nosy, STREAM)) == result.dlq - 2
    assert groups_to_dataframe(nosy, STREAM)["pending"].tolist() == [1]
    assert consumers_to_dataframe(nosy, STREAM, GROUP)["pending"].sum() == 1
    assert len(pending_to_dataframe(nosy, STREAM, GROUP)) == 1
    outcome = replay_outcome(nosy, STREAM, report.replay_id)
    assert sorted(outcome["state"].astype(str)) == ["pending", "waiting"]
    url = f"redis://{userinfo}@127.0.0.1:{private_server.port}/0"
    for command in (
        ("info", STREAM),
        ("pending", STREAM, GROUP),
        ("dlq", STREAM),
        ("outcome", STREAM, report.replay_id),
    ):
        run = streamlab(*command, "--url", url, "--json")
        assert run.returncode == 0, (command, run.stderr)

    # Read-only: replaying is refused before anything is written, naming the command.
    before = admin.xlen(f"{STREAM}_dlq"), admin.xlen(STREAM)
    with pytest.raises(PermissionDeniedError) as denied:
        replay_dlq(nosy, STREAM)
    assert denied.value.command == "evalsha"
    run = streamlab("replay", STREAM, "--url", url, "--yes")
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1
    assert "Traceback" not in run.stderr
    assert "ACL refused the" in run.stderr
    assert (admin.xlen(f"{STREAM}_dlq"), admin.xlen(STREAM)) == before
    fault_report(
        scenario="12 ACL roles: investigator",
        fault="exporters, outcome and CLI reads as a read-only ACL user",
        result=result,
        client=admin,
    )


# -- a missing right: a clear error naming the command, nothing half-written ------------------


@pytest.mark.parametrize(
    "right", ["evalsha", "xack", "xadd", "multi", "watch", "type", "script|load"]
)
def test_a_worker_missing_a_right_stops_with_an_error_naming_it(
    private_server: EmbeddedServer, right: str
) -> None:
    admin = private_server.client()
    userinfo = create_user(admin, "worker", drop=right)
    ids = seed_events(admin, 3)
    RedisStreamsClient(admin).ensure_group(STREAM, GROUP)
    poison = set(ids) if right != "xadd" else set()
    client = user_client(private_server, userinfo)
    log = HandledLog(private_server.dir / "h.log")
    work = (
        (lambda: client.add_to_stream(STREAM, StreamEvent(event_type="push")))  # producing
        if right == "xadd"
        else (lambda: worker_run(client, log, poison, set()))
    )
    with pytest.raises(PermissionDeniedError, match=re.escape(right.upper())) as denied:
        work()
    assert denied.value.command == right
    assert f"+{right}" in str(denied.value)
    # Nothing half-done: an entry is in the DLQ only if it is no longer pending.
    dead = {f[b"dlq_source_id"].decode() for _, f in admin.xrange(f"{STREAM}_dlq")}
    pending = {r["message_id"].decode() for r in admin.xpending_range(STREAM, GROUP, "-", "+", 99)}
    assert not dead & pending, (dead, pending)
    if right in ("evalsha", "xack", "script|load"):
        assert not dead  # the scripts refused before their first write


@pytest.mark.parametrize("right", ["hset", "xdel", "xadd", "expire", "time", "hget", "watch"])
def test_a_replayer_missing_a_right_stops_with_an_error_naming_it(
    private_server: EmbeddedServer, right: str
) -> None:
    admin = private_server.client()
    userinfo = create_user(admin, "replayer", drop=right)
    ids = seed_events(admin, 3)
    dead_letter_all(admin, ids)
    dlq_ids = [i.decode() for i, _ in admin.xrange(f"{STREAM}_dlq")]
    client = user_client(private_server, userinfo)
    # Large entries only need TIME (their transaction picks the new id): replay just those.
    only_big = {"ids": dlq_ids[-1:]}
    with pytest.raises(PermissionDeniedError) as denied:
        replay_dlq(client, STREAM, **(only_big if right == "time" else {}))
    message = str(denied.value)
    if denied.value.command is not None:
        assert denied.value.command == right, message
        assert f"+{right}" in message
    else:  # Redis 7.0 does not name a read refused inside a script: the error lists them
        assert f"+{right}" in message, message
        assert "replay.lua" in message, message
    # Nothing half-done: each event is in the DLQ or in the target, never both or neither.
    in_dlq = {i.decode() for i, _ in admin.xrange(f"{STREAM}_dlq")}
    replayed = [
        f[b"streamlab:replay_of"].decode()
        for _, f in admin.xrange(STREAM)
        if b"streamlab:replay_of" in f
    ]
    assert len(set(replayed)) == len(replayed)
    assert not in_dlq & set(replayed)
    assert in_dlq | set(replayed) == set(dlq_ids)


def test_the_cli_names_the_refused_command_in_one_line(private_server: EmbeddedServer) -> None:
    admin = private_server.client()
    userinfo = create_user(admin, "investigator", drop="xpending")
    url = f"redis://{userinfo}@127.0.0.1:{private_server.port}/0"
    admin.xadd(STREAM, {"a": "1"})
    admin.xgroup_create(STREAM, GROUP, id="0")
    run = streamlab("pending", STREAM, GROUP, "--url", url)
    assert run.returncode == 1
    [line] = run.stderr.splitlines()
    assert "ACL refused the XPENDING command" in line
    assert "+xpending" in line
    assert "investigator-pw" not in line
    failure = Failure(error="boom", error_type="KeyError", source_stream=STREAM)
    admin.xadd(
        f"{STREAM}_dlq", {**encode_event(StreamEvent(event_type="x")), **failure.to_fields()}
    )
    run = streamlab("dlq", STREAM, "--url", url, "--json")
    assert run.returncode == 0, run.stderr  # reading the DLQ needs no XPENDING
    assert [d["error"] for d in json.loads(run.stdout)["entries"]] == ["boom"]


INVESTIGATOR_RIGHTS = [
    a[1:] for a in readme_rule("investigator") if a.startswith("+") and "@" not in a
]


@pytest.mark.parametrize("right", INVESTIGATOR_RIGHTS)
def test_an_investigator_missing_a_right_gets_an_error_naming_it(
    private_server: EmbeddedServer, tmp_path: Path, right: str
) -> None:
    admin = private_server.client()
    userinfo = create_user(admin, "investigator", drop=right)
    ids = seed_events(admin, 4)
    worker_run(RedisStreamsClient(admin), HandledLog(tmp_path / "h.log"), set(ids[:2]), set())
    run_id = replay_dlq(RedisStreamsClient(admin), STREAM, limit=1).replay_id
    # A retry waiting for its backoff: the pending frame reads when it is due (ZMSCORE).
    waiting = RedisStreamsClient(admin).add_to_stream(STREAM, StreamEvent(event_type="push"))
    admin.xreadgroup(GROUP, "w-1", {STREAM: ">"})  # the replayed event too
    admin.xclaim(STREAM, GROUP, RETRY_CONSUMER, 0, [waiting], justid=True)
    admin.zadd(retry_due_key(STREAM, GROUP), {waiting: time.time() * 1000 + 3_600_000})
    nosy = user_client(private_server, userinfo)
    reads: list[Callable[[], object]] = [
        lambda: stream_to_dataframe(nosy, STREAM),
        lambda: dlq_to_dataframe(nosy, STREAM),
        lambda: groups_to_dataframe(nosy, STREAM),
        lambda: consumers_to_dataframe(nosy, STREAM, GROUP),
        lambda: pending_to_dataframe(nosy, STREAM, GROUP),
        lambda: nosy.get_stream_info(STREAM),
        lambda: replay_outcome(nosy, STREAM, run_id),
    ]
    refused: list[PermissionDeniedError] = []
    for read in reads:
        try:
            read()
        except PermissionDeniedError as exc:
            refused.append(exc)
    assert refused, f"nothing needed {right}: the README's rule lists a right nobody uses"
    assert {exc.command for exc in refused} == {right}
    assert all(f"+{right}" in str(exc) for exc in refused)
