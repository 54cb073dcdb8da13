"""The `streamlab` command, run as a user runs it."""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest

from streamlab._redact import redact, redact_url
from streamlab.client import RedisStreamsClient
from streamlab.embedded import EmbeddedServer
from streamlab.events import encode_event
from streamlab.records import Failure
from streamlab.samples import sample_events


def streamlab(*args: str, cwd: os.PathLike[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamlab.cli", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        cwd=cwd,
    )


def test_demo_tells_the_incident_story_and_loses_nothing(tmp_path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "streamlab.cli", "demo", "--events", "600", "--json"],
        capture_output=True, text=True, timeout=90, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["stream"] == "webhook_events"
    assert result["produced"] == 600
    assert result["dead_lettered"] > 0
    assert result["acked"] + result["dead_lettered"] + result["held_by_dead_worker"] == 600
    assert {s.split(":")[0] for s in result["signatures"]} == {"LookupError", "UpstreamTimeout"}
    assert sum(result["signatures"].values()) == result["dead_lettered"]
    assert result["tried_ok"] == result["replayed"] == result["dead_lettered"]
    assert result["replay_failed"] == 0
    assert result["processed_after_replay"] == result["replayed"]
    assert result["dlq_length"] == 0
    assert result["pending"]["webhook_workers"] == result["held_by_dead_worker"]
    chart = tmp_path / "streamlab-demo-failures.png"
    assert result["chart"] == str(chart)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["seconds"] < 60
    assert "streamlab groups webhook_events" in result["next"]


def test_demo_text_on_an_external_server_names_its_stream_and_refuses_to_reuse_it(
    redis_url: str, stream_name: str, tmp_path
) -> None:
    url = redis_url.replace("redis://", "redis://default:sekret@", 1)
    run = subprocess.run(
        [sys.executable, "-m", "streamlab.cli", "demo", "--events", "300", "--url", redis_url,
         "--stream", stream_name],
        capture_output=True, text=True, timeout=90, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert f"into stream {stream_name!r}" in out
    for heading in ("1. produce", "2. the DLQ", "3. try the fixed", "4. dry run", "5. replay",
                    "6. nothing lost", "chart of failures over time:", "next, try:"):  # fmt: skip
        assert heading in out
    assert f"streamlab dlq {stream_name} --summary" in out
    again = streamlab("demo", "--events", "10", "--url", redis_url, "--stream", stream_name)
    assert again.returncode == 2
    assert "already exists" in again.stderr
    # --keep is the embedded server's: with --url it is a usage error, one line, not ignored.
    kept = streamlab("demo", "--keep", "--url", redis_url, "--stream", f"{stream_name}:k")
    assert kept.returncode == 2
    assert kept.stderr.strip().count("\n") == 0
    assert "--keep is for the embedded server" in kept.stderr
    assert "sekret" not in url or "sekret" not in out


def test_info_pending_and_dlq_commands(
    streams_client: RedisStreamsClient, stream_name: str, redis_url: str
) -> None:
    streams_client.ensure_group(stream_name, "g")
    streams_client.add_many(stream_name, sample_events(5))
    [first, *_] = streams_client.read_from_stream(stream_name, "g", "c1", 2)
    fields = {**first.fields, **Failure(error="boom", error_type="ValueError").to_fields()}
    streams_client.redis.xadd(streams_client.dlq_stream(stream_name), fields)

    info = json.loads(streamlab("info", stream_name, "--url", redis_url, "--json").stdout)
    assert info["length"] == 5
    assert info["groups"][0]["pending"] == 2
    assert info["groups"][0]["lag"] == 3
    text = streamlab("info", stream_name, "--url", redis_url).stdout.splitlines()
    assert text[0].startswith(f"{stream_name}: 5 entries, first ")
    assert text[1].split() == ["group", "consumers", "pending", "lag", "entries_read",
                               "last_delivered_id"]  # fmt: skip
    assert text[2].split()[:5] == ["g", "1", "2", "3", "2"]

    pending = json.loads(
        streamlab("pending", stream_name, "g", "--url", redis_url, "--json").stdout
    )
    assert pending["count"] == 2
    assert [(p["consumer"], p["deliveries"]) for p in pending["pending"]] == [("c1", 1)] * 2

    dlq = json.loads(streamlab("dlq", stream_name, "--url", redis_url, "--json").stdout)
    assert dlq["count"] == dlq["total"] == 1
    assert [(d["error_signature"].split(":")[0], d["error"]) for d in dlq["entries"]] == [
        ("ValueError", "boom")
    ]

    # A DLQ configured under another name (dlq_stream) is read with --dlq.
    streams_client.redis.xadd(f"{stream_name}:failed", fields)
    args = ["dlq", stream_name, "--dlq", f"{stream_name}:failed", "--url", redis_url, "--json"]
    assert [d["error"] for d in json.loads(streamlab(*args).stdout)["entries"]] == ["boom"]


def test_missing_url_is_a_clear_error() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "streamlab.cli", "info", "s"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 2
    assert "REDIS_URL" in run.stderr


def test_replay_command_dry_runs_asks_then_replays(
    streams_client: RedisStreamsClient, stream_name: str, redis_url: str
) -> None:
    dlq = streams_client.dlq_stream(stream_name)
    ids = []
    for i, event in enumerate(sample_events(6)):
        fields = {k: v for k, v in encode_event(event).items()}
        error = "ValueError" if i % 2 else "KeyError"
        failure = Failure(error="boom", error_type=error, source_stream=stream_name, group="g")
        entry = streams_client.redis.xadd(dlq, {**fields, **failure.to_fields()})
        ids.append((entry.decode(), error))
    wanted = [i for i, error in ids if error == "ValueError"]
    args = ("replay", stream_name, "--url", redis_url, "--error-type", "ValueError", "--json")

    dry = json.loads(streamlab(*args, "--dry-run").stdout)
    assert dry["dry_run"] is True
    assert dry["replayed"] == wanted
    assert streams_client.redis.xlen(dlq) == 6

    refused = streamlab(*args)  # no terminal to confirm on, no --yes
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    assert streams_client.redis.xlen(dlq) == 6

    done = json.loads(streamlab(*args, "--yes").stdout)
    assert done["replayed"] == wanted
    assert streams_client.redis.xlen(dlq) == 3
    injected = streams_client.range(stream_name)
    assert [m.fields["streamlab:replay_of"].decode() for m in injected] == wanted
    assert {m.fields["retry_count"] for m in injected} == {b"0"}

    again = json.loads(streamlab(*args, "--yes").stdout)
    assert again["replayed"] == []

    outcome = streamlab("outcome", stream_name, done["replay_id"], "--url", redis_url, "--json")
    assert outcome.returncode == 0, outcome.stderr
    doc = json.loads(outcome.stdout)
    assert doc["count"] == len(doc["events"]) == 3
    assert sum(doc["states"].values()) == 3
    assert {e["id"] for e in doc["events"]} == set(done["replayed"])
    assert done["counts"]["replayed"] == len(done["replayed"]) == 3
    text = streamlab("outcome", stream_name, done["replay_id"], "--url", redis_url).stdout
    assert text.splitlines()[0].endswith(": 3 events (per group)")
    assert text.splitlines()[1].split() == ["state", "events"]


def test_replay_command_time_bounds(
    streams_client: RedisStreamsClient, stream_name: str, redis_url: str
) -> None:
    dlq = streams_client.dlq_stream(stream_name)
    failure = Failure(error="boom", error_type="KeyError", source_stream=stream_name)
    for entry_id in ("5000-0", "5000-1", "9000-0"):
        fields = {**encode_event(next(iter(sample_events(1)))), **failure.to_fields()}
        streams_client.redis.xadd(dlq, fields, id=entry_id)
    args = ("replay", stream_name, "--url", redis_url, "--dry-run", "--json")

    def selected(*bounds: str) -> list[str]:
        run = streamlab(*args, *bounds)
        assert run.returncode == 0, run.stderr
        return list(json.loads(run.stdout)["replayed"])

    # Bare digits are milliseconds, as in a stream id; a full id splits a millisecond.
    assert selected("--since", "6000") == ["9000-0"]
    assert selected("--until", "5000") == ["5000-0", "5000-1"]
    assert selected("--since", "5000-1", "--until", "5000-1") == ["5000-1"]
    assert selected("--since", "1h") == []  # dead-lettered in 1970, not within the hour


def test_ctrl_c_cancels_a_replay_between_batches_and_reports_what_remains(
    streams_client: RedisStreamsClient, stream_name: str, redis_url: str
) -> None:
    r = streams_client.redis
    dlq = streams_client.dlq_stream(stream_name)
    failure = Failure(error="boom", error_type="KeyError", source_stream=stream_name, group="g")
    pipe = r.pipeline(transaction=False)
    for event in sample_events(600):
        pipe.xadd(dlq, {**encode_event(event), **failure.to_fields()})
    ids = [i.decode() for i in pipe.execute()]
    args = ("replay", stream_name, "--url", redis_url, "--yes")
    # 600 events at 200/s: about 3 s, so the signal surely lands mid-run.
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlab.cli", *args, "--rate", "200"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        # Events in the target: the real run (and its handler) has begun.
        while r.xlen(stream_name) < 40:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    replayed = [f[b"streamlab:replay_of"].decode() for _, f in r.xrange(stream_name)]
    left = [i.decode() for i, _ in r.xrange(dlq)]
    assert 40 <= len(replayed) < len(ids)  # really stopped half-way
    assert sorted(replayed + left) == sorted(ids)  # nothing lost, nothing doubled
    report = re.search(r"(\d+) replayed, 0 skipped, 0 failed, cancelled with (\d+) remaining", out)
    assert report, out
    assert (int(report[1]), int(report[2])) == (len(replayed), len(left))

    rest = streamlab(*args, "--json")
    assert rest.returncode == 0, rest.stderr
    done = json.loads(rest.stdout)
    assert sorted(done["replayed"]) == sorted(left)
    assert done["cancelled"] is False
    assert done["remaining"] == []
    replayed = [f[b"streamlab:replay_of"].decode() for _, f in r.xrange(stream_name)]
    assert sorted(replayed) == sorted(ids)
    assert r.xlen(dlq) == 0


# -- errors: one line on stderr, exit 1 (operational) or 2 (usage), never a traceback ---------


def assert_one_line_error(run: subprocess.CompletedProcess[str], code: int, *says: str) -> str:
    assert run.returncode == code, (run.returncode, run.stdout[-500:], run.stderr[-2000:])
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("streamlab"), run.stderr
    assert "Traceback" not in run.stderr
    for text in says:
        assert text in lines[0], lines[0]
    return lines[0]


def test_missing_stream_or_group_and_wrong_key_types_are_one_line_errors(
    streams_client: RedisStreamsClient, stream_name: str, redis_url: str
) -> None:
    r = streams_client.redis
    streams_client.add_to_stream(stream_name, next(iter(sample_events(1))))
    not_a_stream = f"{stream_name}:string"
    r.set(not_a_stream, "x")
    missing = f"{stream_name}:missing"

    run = streamlab("info", missing, "--url", redis_url)
    assert_one_line_error(run, 1, f"stream {missing!r} does not exist")
    run = streamlab("pending", stream_name, "nogroup", "--url", redis_url)
    assert_one_line_error(run, 1, "consumer group 'nogroup' does not exist")
    run = streamlab("pending", missing, "g", "--url", redis_url, "--json")
    assert_one_line_error(run, 1, "does not exist")
    for command in (("info", not_a_stream), ("pending", not_a_stream, "g")):
        run = streamlab(*command, "--url", redis_url)
        assert_one_line_error(run, 1, f"key {not_a_stream!r} exists but is not a stream")
    r.set(f"{stream_name}_dlq", "x")
    run = streamlab("dlq", stream_name, "--url", redis_url)
    assert_one_line_error(run, 1, "is not a stream")


def test_usage_errors_are_one_line_and_exit_2(redis_url: str) -> None:
    for flags, says in (
        (("replay", "s", "--rate", "nan", "--yes"), "--rate: expected a finite number > 0"),
        (("replay", "s", "--rate", "inf", "--yes"), "--rate: expected a finite number > 0"),
        (("replay", "s", "--rate", "-3", "--yes"), "--rate: must be > 0, got -3.0"),
        (("pending", "s", "g", "--limit", "0"), "--limit: must be >= 1, got 0"),
        (("dlq", "s", "--limit", "0"), "--limit: must be >= 1"),
        (("dlq", "s", "--limit", "many"), "--limit: expected a whole number, got 'many'"),
        (("replay", "s", "--batch-size", "0", "--yes"), "--batch-size"),
        (("info",), "the following arguments are required: stream"),
        (("nosuchcommand",), "invalid choice"),
    ):
        assert_one_line_error(streamlab(*flags, "--url", redis_url), 2, says)


def test_out_of_range_and_malformed_ids_are_usage_errors(
    streams_client: RedisStreamsClient, stream_name: str, redis_url: str
) -> None:
    failure = Failure(error="boom", error_type="KeyError", source_stream=stream_name)
    fields = {**encode_event(next(iter(sample_events(1)))), **failure.to_fields()}
    streams_client.redis.xadd(streams_client.dlq_stream(stream_name), fields)
    big = str(2**64)
    for flags in (
        ("--since", big),  # bare digits: an id's time part
        ("--until", f"1-{big}"),
        ("--id", f"{big}-0"),
        ("--id", f"1-{big}"),
    ):
        run = streamlab("replay", stream_name, "--url", redis_url, "--dry-run", *flags)
        assert_one_line_error(run, 2, "out of range")
    run = streamlab("replay", stream_name, "--url", redis_url, "--dry-run", "--id", "abc")
    assert_one_line_error(run, 2, "is not a stream id")
    # The largest id is still a valid bound.
    top = f"{2**64 - 1}-{2**64 - 1}"
    run = streamlab("replay", stream_name, "--url", redis_url, "--dry-run", "--until", top)
    assert run.returncode == 0, run.stderr
    assert "1 would replay" in run.stdout


def test_bad_urls_are_usage_errors() -> None:
    for url, says in (
        ("http://127.0.0.1:1/0", "bad --url"),
        ("redis://:hunter2@127.0.0.1:notaport/0", "bad --url"),
    ):
        line = assert_one_line_error(streamlab("info", "s", "--url", url), 2, says)
        assert "hunter2" not in line
    run = streamlab("demo", "--url", "http://127.0.0.1:1/0")
    assert_one_line_error(run, 2, "bad --url")
    run = streamlab("info", "s", "--url", "redis://127.0.0.1:1/0", "--tls-ca", "/nope.pem")
    assert_one_line_error(run, 2, "--tls-ca needs a rediss:// URL")


def test_an_unreachable_or_silent_server_fails_within_the_timeout() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    run = streamlab("info", "s", "--url", f"redis://127.0.0.1:{closed}/0")
    assert_one_line_error(run, 1, "cannot reach the server", "refused")

    # A full accept queue: the kernel drops the SYN, so connecting hangs until the timeout.
    with socket.socket() as full, socket.socket() as silent:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        fillers = [socket.socket() for _ in range(3)]
        for filler in fillers:
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(full.getsockname())
        # A listener that never answers: connected (backlog) but no reply.
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        try:
            for port in (full.getsockname()[1], silent.getsockname()[1]):
                started = time.monotonic()
                url = f"redis://127.0.0.1:{port}/0"
                run = streamlab("info", "s", "--url", url, "--timeout", "1")
                elapsed = time.monotonic() - started
                assert_one_line_error(run, 1, "did not answer in time", "--timeout")
                assert elapsed < 30  # 1 s timeout, one attempt; wide margin for a busy box
        finally:
            for filler in fillers:
                filler.close()


@pytest.fixture
def password_server(private_server: EmbeddedServer) -> EmbeddedServer:
    """The private server with the default user's password set to ``s3cret-pw``."""
    admin = private_server.client()
    admin.config_set("requirepass", "s3cret-pw")
    admin.close()
    return private_server


def test_passwords_are_redacted_and_a_wrong_one_is_one_line(
    password_server: EmbeddedServer, tmp_path
) -> None:
    port = password_server.port
    good = f"redis://:s3cret-pw@127.0.0.1:{port}/0"
    # In tmp_path: the demo writes its chart into the working folder (not the checkout's).
    run = streamlab("demo", "--events", "60", "--url", good, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "s3cret-pw" not in run.stdout + run.stderr
    assert f"redis://:***@127.0.0.1:{port}/0" in run.stdout

    wrong = f"redis://:wrong-pw@127.0.0.1:{port}/0"
    for command in (("info", "s"), ("dlq", "s"), ("replay", "s", "--dry-run"), ("demo",)):
        started = time.monotonic()
        run = streamlab(*command, "--url", wrong)
        assert time.monotonic() - started < 30  # no retry loop on a refused password
        line = assert_one_line_error(run, 1, "authentication failed")
        assert "wrong-pw" not in line
    run = streamlab("info", "s", "--url", f"redis://127.0.0.1:{port}/0")
    assert_one_line_error(run, 1, "uthentication")

    # The URL may also come from REDIS_URL; its password is redacted in errors just the same.
    env = {**os.environ, "REDIS_URL": f"redis://:wrong-pw@127.0.0.1:{port}:x/0"}
    run = subprocess.run(
        [sys.executable, "-m", "streamlab.cli", "info", "s"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    line = assert_one_line_error(run, 2, "bad --url")
    assert "wrong-pw" not in line


def test_redact_url_masks_every_password_form() -> None:
    assert redact_url("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert redact_url("rediss://user:pw@h:1/0") == "rediss://user:***@h:1/0"
    assert redact_url("redis://h:1/0?password=pw&db=1") == "redis://h:1/0?password=***&db=1"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"
    assert redact("can't reach redis://:p%40w@h/0 (p@w)", "redis://:p%40w@h/0") == (
        "can't reach redis://:***@h/0 (***)"
    )
    assert (
        redact("see rediss://u:pw@h:1/0 and redis://h/0")
        == "see rediss://u:***@h:1/0 and redis://h/0"
    )
    # A URL typed where the command name goes is quoted by the usage error: redacted too.
    run = streamlab("redis://:hunter2@127.0.0.1:1/0", "info")
    line = assert_one_line_error(run, 2, "invalid choice")
    assert "hunter2" not in line


def test_a_command_the_acl_refuses_is_one_line_naming_it(private_server: EmbeddedServer) -> None:
    admin = private_server.client()
    admin.execute_command(
        "ACL", "SETUSER", "nosy", "on", ">nosy-pw", "~*", "+@connection", "+xlen", "+xrange"
    )
    admin.close()
    url = f"redis://nosy:nosy-pw@127.0.0.1:{private_server.port}/0"
    line = assert_one_line_error(streamlab("info", "s", "--url", url), 1, "ACL refused")
    assert "+xrevrange" in line or "+xinfo" in line
    line = assert_one_line_error(streamlab("pending", "s", "g", "--url", url), 1, "ACL refused")
    assert "XPENDING" in line or "XINFO" in line
    assert "nosy-pw" not in line


def test_a_broken_pipe_is_one_line_not_a_traceback(
    streams_client: RedisStreamsClient, stream_name: str, redis_url: str
) -> None:
    r = streams_client.redis
    failure = Failure(error="boom " * 40, error_type="KeyError", source_stream=stream_name)
    pipe = r.pipeline(transaction=False)
    for event in sample_events(1500):
        pipe.xadd(
            streams_client.dlq_stream(stream_name), {**encode_event(event), **failure.to_fields()}
        )
    pipe.execute()
    cli = f"{sys.executable} -m streamlab.cli dlq '{stream_name}' --url {redis_url} --limit 1500"
    run = subprocess.run(
        ["bash", "-c", f'{cli} | head -1; echo "exit=${{PIPESTATUS[0]}}" >&2'],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert len(run.stdout.splitlines()) == 1
    error, status = run.stderr.splitlines()  # output is ~400 KB: the pipe surely broke
    assert error == "streamlab: error: output closed before everything was printed (broken pipe)"
    assert status == "exit=1"


def test_unknown_replay_id_and_a_replay_where_every_event_fails_exit_1(
    streams_client: RedisStreamsClient, stream_name: str, redis_url: str
) -> None:
    r = streams_client.redis
    dlq = streams_client.dlq_stream(stream_name)
    failure = Failure(error="boom", error_type="KeyError", source_stream=stream_name, group="g")
    for event in sample_events(3):
        r.xadd(dlq, {**encode_event(event), **failure.to_fields()})
    run = streamlab("outcome", stream_name, "no-such-run", "--url", redis_url)
    assert_one_line_error(run, 1, "no replay run 'no-such-run' of DLQ")

    target = f"{stream_name}:not-a-stream"
    r.set(target, "x")
    args = ("replay", stream_name, "--url", redis_url, "--target", target)
    for mode in ("--dry-run", "--yes"):
        run = streamlab(*args, mode)
        line = assert_one_line_error(run, 1, "all 3 selected events", "stay in the DLQ")
        assert f"target {target!r} is a string, not a stream" in line
        assert "3 failed" in run.stdout  # the report itself is still printed
    assert r.xlen(dlq) == 3


def test_operator_commands_text_json_and_exit_codes(
    streams_client: RedisStreamsClient, stream_name: str, redis_url: str, tmp_path
) -> None:
    from streamlab.frames import read_parquet
    from streamlab.incident import BUG_TENANT, seed_incident

    incident = seed_incident(streams_client, stream_name, events=300)
    dead = incident.stats.dead_lettered

    def ok(*args: str) -> str:
        run = streamlab(*args, "--url", redis_url)
        assert run.returncode == 0, run.stderr
        return run.stdout

    def js(*args: str) -> dict:
        return json.loads(ok(*args, "--json"))

    groups = js("groups", stream_name)["groups"]
    assert {g["group"] for g in groups} == {"audit", "webhook_workers"}
    text = ok("groups", stream_name)
    assert text.startswith(f"{stream_name}: 2 groups\n")
    assert "lag" in text
    assert "\x1b[" not in text
    assert ok("consumers", stream_name, "audit").startswith(f"{stream_name} audit: 1 consumer\n")
    consumers = {c["consumer"]: c["pending"] for c in
                 js("consumers", stream_name, "webhook_workers")["consumers"]}  # fmt: skip
    assert consumers["worker-dead"] == incident.held_by_dead_worker
    pending = js("pending", stream_name, "webhook_workers", "--limit", "3")
    assert pending["total"] == incident.held_by_dead_worker
    assert pending["count"] == len(pending["pending"]) == 3
    assert "showing 3 of" in ok("pending", stream_name, "webhook_workers", "--limit", "3")
    streams_client.ensure_group(stream_name, "idle")
    assert "nothing pending" in ok("pending", stream_name, "idle")

    read = js("read", stream_name, "--limit", "5")
    assert read["count"] == 5
    assert len(read["entries"]) == 5
    first = read["entries"][0]["id"]
    shown = js("show", stream_name, first)
    assert shown["id"] == first
    assert shown["stream"] == stream_name
    assert "payload:" in ok("show", stream_name, first)

    dlq = js("dlq", stream_name, "--limit", "2")
    assert dlq["total"] == dlq["matching"] == dead
    assert dlq["count"] == len(dlq["entries"]) == 2
    assert f"showing 2 of {dead} dead letters" in ok("dlq", stream_name, "--limit", "2")
    bug = js("dlq", stream_name, "--tenant-id", BUG_TENANT, "--error-type", "LookupError")
    assert 0 < bug["count"] == bug["matching"] < bug["total"] == dead
    assert {e["tenant_id"] for e in bug["entries"]} == {BUG_TENANT}
    dlq_id = bug["entries"][0]["id"]
    assert "traceback:" in ok("show", stream_name, dlq_id)
    summary = js("dlq", stream_name, "--summary")
    assert sum(g["count"] for g in summary["groups"]) == dead
    by_tenant = js("dlq", stream_name, "--summary", "--by", "tenant_id")["groups"]
    assert by_tenant[0]["tenant_id"] == BUG_TENANT

    out = tmp_path / "events.parquet"
    assert js("export", stream_name, "--to", str(out))["count"] == 300
    assert len(read_parquet(out)) == 300
    # A Parquet copy of the DLQ reads back as the DLQ frame, ready for dlq_summary.
    copy = tmp_path / "dlq.parquet"
    assert js("export", stream_name, "--dlq", "--to", str(copy))["count"] == dead
    assert "error_signature" in read_parquet(copy).columns
    assert len(read_parquet(copy)) == dead
    # Filtered, it is still the DLQ frame (the selected rows), through the same writer.
    some = tmp_path / "bug.parquet"
    exported = js("export", stream_name, "--dlq", "--tenant-id", BUG_TENANT, "--to", str(some))
    back = read_parquet(some)
    assert exported["count"] == len(back) >= bug["count"]
    assert set(back["tenant_id"]) == {BUG_TENANT}
    assert list(back.columns) == list(read_parquet(copy).columns)
    lines = tmp_path / "bug.jsonl"
    exported = js("export", stream_name, "--dlq", "--tenant-id", BUG_TENANT, "--to", str(lines))
    assert exported["count"] == len(lines.read_text().splitlines()) >= bug["count"]

    claimed = js("claim", stream_name, "webhook_workers", "w2", "--min-idle", "1ms", "--all")
    assert claimed["count"] == incident.held_by_dead_worker

    # audit lags behind: trimming would drop entries it was never given.
    run = streamlab("trim", stream_name, "--maxlen", "10", "--url", redis_url)
    assert run.returncode == 1
    assert "--force" in run.stderr
    assert streams_client.redis.xlen(stream_name) == 300
    assert js("trim", stream_name, "--maxlen", "10", "--force")["removed"] == 290

    for bad, text in (
        (("claim", stream_name, "g", "c", "--min-idle", "1s"), "ids or --all"),
        (("trim", stream_name), "--maxlen N or --minid"),
        (("export", stream_name, "--to", "x.txt"), "must end with"),
        (("dlq", stream_name, "--by", "nope"), "invalid choice"),
    ):
        run = streamlab(*bad, "--url", redis_url)
        assert run.returncode == 2, (bad, run.stderr)
        assert text in run.stderr
        assert "Traceback" not in run.stderr

    assert re.match(r"streamlab \d", streamlab("--version").stdout)
    assert "complete -o default -F _streamlab streamlab" in streamlab("completion", "bash").stdout


def test_replays_lists_runs_and_discard_archives_before_deleting(
    streams_client: RedisStreamsClient, stream_name: str, redis_url: str, tmp_path
) -> None:
    import pandas as pd

    from streamlab.incident import BUG_TENANT, seed_incident

    seed_incident(streams_client, stream_name, events=300)
    dlq = streams_client.dlq_stream(stream_name)
    url = ("--url", redis_url)
    none = json.loads(streamlab("replays", stream_name, *url, "--json").stdout)
    assert none["count"] == 0
    assert "no replay runs" in streamlab("replays", stream_name, *url).stdout
    dry = streamlab("replay", stream_name, "--error-type", "UpstreamTimeout", "--dry-run", *url)
    assert "selected" in dry.stdout
    assert streamlab("replay", stream_name, "--error-type", "UpstreamTimeout", "--yes", *url)
    runs = json.loads(streamlab("replays", stream_name, *url, "--json").stdout)
    assert runs["count"] == 1
    assert runs["replays"][0]["events"] > 0

    bug = ("--tenant-id", BUG_TENANT)
    before = streams_client.redis.xlen(dlq)
    plan = json.loads(streamlab("discard", stream_name, *bug, "--dry-run", *url, "--json").stdout)
    assert plan["dry_run"]
    assert plan["count"] > 0
    assert streams_client.redis.xlen(dlq) == before
    refused = subprocess.run(
        [sys.executable, "-m", "streamlab.cli", "discard", stream_name, *bug, *url],
        capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    archive = tmp_path / "gone.parquet"
    done = streamlab("discard", stream_name, *bug, "--archive", str(archive), "--yes", *url)
    assert done.returncode == 0, done.stderr
    assert f"discarded {plan['count']} dead letters" in done.stdout
    assert streams_client.redis.xlen(dlq) == before - plan["count"]
    archived = pd.read_parquet(archive)
    assert len(archived) == plan["count"]
    assert set(archived["tenant_id"]) == {BUG_TENANT}
    bad = streamlab("discard", stream_name, "--archive", "x.csv", "--yes", *url)
    assert bad.returncode == 2


def test_discard_archives_a_filtered_selection_as_the_dlq_frame_then_removes_it(
    streams_client: RedisStreamsClient, stream_name: str, redis_url: str, tmp_path
) -> None:
    import pandas as pd

    from streamlab.frames import dlq_to_dataframe, read_parquet
    from streamlab.incident import BUG_TENANT, seed_incident

    seed_incident(streams_client, stream_name, events=300)
    r = streams_client.redis
    dlq = streams_client.dlq_stream(stream_name)
    url = ("--url", redis_url)
    frame = dlq_to_dataframe(streams_client, stream_name)
    chosen = frame[(frame["tenant_id"] == BUG_TENANT) & (frame["error_type"] == "LookupError")]
    assert 0 < len(chosen) < len(frame)
    bug = ("--tenant-id", BUG_TENANT, "--error-type", "LookupError")

    # An archive that cannot be written: one line, exit 1, and nothing removed.
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for where in (blocker / "x.parquet", tmp_path / "no-such-folder" / "x.parquet",
                  blocker / "x.jsonl"):  # fmt: skip
        run = streamlab("discard", stream_name, *bug, "--archive", str(where), "--yes", *url)
        assert_one_line_error(run, 1, "cannot write the archive", "nothing was discarded")
        assert r.xlen(dlq) == len(frame)
        assert not where.exists()
        assert not list(tmp_path.glob("**/*.partial"))

    archive = tmp_path / "gone.parquet"
    run = streamlab("discard", stream_name, *bug, "--archive", str(archive), "--yes", *url,
                    "--json")  # fmt: skip
    assert run.returncode == 0, run.stderr
    done = json.loads(run.stdout)
    removed = done["ids"]
    assert removed == chosen["id"].tolist()
    assert done["count"] == len(removed)
    # The archive is the DLQ frame: pandas reads the same columns (plus export_parquet's
    # _extra), streamlab's read_parquet gives back exactly what dlq_to_dataframe gave.
    plain = pd.read_parquet(archive)
    assert [c for c in plain.columns if c != "_extra"] == list(frame.columns)
    assert plain["id"].tolist() == removed
    back = read_parquet(archive)
    pd.testing.assert_frame_equal(back, chosen.reset_index(drop=True), check_categorical=False)
    left = {i.decode() for i, _ in r.xrange(dlq)}
    assert left.isdisjoint(removed)
    assert len(left) == len(frame) - len(removed)
    assert not list(tmp_path.glob("*.partial"))

    # An existing archive is never overwritten: exit 2, nothing removed.
    again = streamlab("discard", stream_name, "--archive", str(archive), "--yes", *url)
    assert_one_line_error(again, 2, "refusing to overwrite")
    assert r.xlen(dlq) == len(left)
    assert pd.read_parquet(archive)["id"].tolist() == removed

    # JSON lines still work, with the DLQ frame's columns too.
    lines = tmp_path / "timeouts.jsonl"
    run = streamlab("discard", stream_name, "--error-type", "UpstreamTimeout", "--archive",
                    str(lines), "--yes", *url)  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in lines.read_text().splitlines()]
    assert rows
    assert {row["error_type"] for row in rows} == {"UpstreamTimeout"}
    assert set(rows[0]) == set(frame.columns) - {"_raw"}
    assert f"discarded {len(rows)} dead letters" in run.stdout
    assert left - {i.decode() for i, _ in r.xrange(dlq)} == {row["id"] for row in rows}


def test_discard_removes_nothing_when_the_archive_fails_part_way(
    stream_name: str, redis_url: str, tmp_path, monkeypatch, capsys
) -> None:
    import errno

    import streamlab.frames
    from streamlab.cli import main
    from streamlab.client import connect

    streams_client = RedisStreamsClient(connect(redis_url))
    dlq = streams_client.dlq_stream(stream_name)
    failure = Failure(error="boom", error_type="KeyError", source_stream=stream_name)
    for event in sample_events(5):
        streams_client.redis.xadd(dlq, {**encode_event(event), **failure.to_fields()})
    real = streamlab.frames.export_parquet

    def disk_full(*args, **kwargs) -> int:
        real(*args, **kwargs)  # the partial file is written, then the disk fills up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(streamlab.frames, "export_parquet", disk_full)
    archive = tmp_path / "x.parquet"
    code = main(["discard", stream_name, "--archive", str(archive), "--yes", "--url", redis_url])
    err = capsys.readouterr().err
    assert code == 1
    assert err.splitlines() == [f"streamlab: error: cannot write the archive {archive}: "
                                "No space left on device; nothing was discarded"]  # fmt: skip
    assert streams_client.redis.xlen(dlq) == 5
    assert list(tmp_path.iterdir()) == []
    streams_client.redis.close()


# -- the audit's defects: each bad value is one line naming its flag, and changes nothing ----


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """``streamlab *args`` in this process (no interpreter start-up), as `streamlab` gives it."""
    from streamlab.cli import main

    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)


def dead_letters(client: RedisStreamsClient, dlq: str, n: int, stream: str) -> list[str]:
    failure = Failure(error="boom", error_type="KeyError", source_stream=stream, group="g")
    return [
        client.redis.xadd(dlq, {**encode_event(event), **failure.to_fields()}).decode()
        for event in sample_events(n)
    ]


def test_a_bad_id_filter_is_a_usage_error_in_every_command_that_filters(
    streams_client: RedisStreamsClient, stream_name: str, redis_url: str, tmp_path, capsys
) -> None:
    # dlq used to build its DLQFilter without DLQFilter.of: `--id garbage` matched nothing, exit 0.
    dlq = streams_client.dlq_stream(stream_name)
    dead_letters(streams_client, dlq, 3, stream_name)
    out = tmp_path / "x.csv"
    for command in (
        ("dlq", stream_name),
        ("dlq", stream_name, "--summary"),
        ("replay", stream_name, "--yes"),
        ("discard", stream_name, "--yes"),
        ("export", stream_name, "--dlq", "--to", str(out)),
    ):
        run = cli(capsys, *command, "--id", "garbage", "--url", redis_url)
        line = assert_one_line_error(run, 2, "argument --id: 'garbage' is not a stream id")
        assert "no dead letters" not in run.stdout + line
        assert streams_client.redis.xlen(dlq) == 3
        assert streams_client.redis.xlen(stream_name) == 0
    assert not out.exists()
    # A good id still selects through the same filter.
    first = streams_client.redis.xrange(dlq, count=1)[0][0].decode()
    doc = json.loads(cli(capsys, "dlq", stream_name, "--id", first, "--url", redis_url,
                         "--json").stdout)  # fmt: skip
    assert [e["id"] for e in doc["entries"]] == [first]


def test_export_takes_dlq_name_like_the_other_commands_and_a_limit(
    streams_client: RedisStreamsClient, stream_name: str, redis_url: str, tmp_path, capsys
) -> None:
    from streamlab.frames import read_parquet

    streams_client.add_many(stream_name, sample_events(5))
    own = dead_letters(streams_client, streams_client.dlq_stream(stream_name), 4, stream_name)
    other = dead_letters(streams_client, f"{stream_name}:failed", 6, stream_name)

    def export(*args: str) -> dict:
        run = cli(capsys, "export", stream_name, *args, "--url", redis_url, "--json")
        assert run.returncode == 0, run.stderr
        return dict(json.loads(run.stdout))

    csv, lines, parquet = (tmp_path / n for n in ("a.csv", "a.jsonl", "a.parquet"))
    assert export("--dlq", f"{stream_name}:failed", "--to", str(csv))["count"] == 6
    assert len(csv.read_text().splitlines()) == 1 + 6  # the header, then the DLQ's entries
    # --dlq alone is the stream's own DLQ, named as every command names it.
    doc = export("--dlq", "--to", str(lines), "--limit", "3")
    assert (doc["dlq"], doc["count"]) == (streams_client.dlq_stream(stream_name), 3)
    assert [json.loads(row)["id"] for row in lines.read_text().splitlines()] == own[:3]
    doc = export("--dlq", f"{stream_name}:failed", "--to", str(parquet), "--limit", "2")
    assert read_parquet(parquet)["id"].tolist() == other[:2]
    assert doc["count"] == 2
    # Filtered, --limit caps what matches; without --dlq it caps the stream's entries.
    doc = export("--dlq", f"{stream_name}:failed", "--id", other[4], "--id", other[5],
                 "--limit", "1", "--to", str(parquet))  # fmt: skip
    assert read_parquet(parquet)["id"].tolist() == [other[4]]
    assert doc["count"] == 1
    doc = export("--dlq", "--id", own[3], "--to", str(csv), "--limit", "5")
    assert doc["count"] == 1
    assert export("--to", str(csv), "--limit", "2") == {
        "stream": stream_name, "dlq": None, "count": 2, "path": str(csv)}  # fmt: skip
    run = cli(capsys, "export", stream_name, "--to", str(csv), "--limit", "0", "--url", redis_url)
    assert_one_line_error(run, 2, "argument --limit: must be >= 1, got 0")


def test_export_of_a_filtered_dlq_reads_it_once_and_writes_the_selection(
    streams_client: RedisStreamsClient, stream_name: str, redis_url: str, tmp_path, capsys
) -> None:
    from streamlab.filters import DLQFilter
    from streamlab.frames import dlq_to_dataframe, read_parquet
    from streamlab.replay import select_dlq

    r = streams_client.redis
    dlq = streams_client.dlq_stream(stream_name)
    for i, event in enumerate(sample_events(40)):
        failure = Failure(error="boom", error_type=("KeyError", "ValueError")[i % 2],
                          source_stream=stream_name)  # fmt: skip
        r.xadd(dlq, {**encode_event(event), **failure.to_fields()})
    flt = DLQFilter.of(error_type="ValueError")
    chosen = select_dlq(streams_client, stream_name, flt, limit=6).ids
    frame = dlq_to_dataframe(streams_client, stream_name)
    parquet, csv, lines = (tmp_path / n for n in ("v.parquet", "v.csv", "v.jsonl"))
    r.config_resetstat()
    run = cli(capsys, "export", stream_name, "--dlq", "--error-type", "ValueError", "--limit",
              "6", "--to", str(parquet), "--url", redis_url, "--json")  # fmt: skip
    assert run.returncode == 0, run.stderr
    # One XRANGE of the DLQ (40 entries, one page): no selection read first and read again.
    assert r.info("commandstats")["cmdstat_xrange"]["calls"] == 1
    assert json.loads(run.stdout)["count"] == 6
    back = read_parquet(parquet)
    assert back["id"].tolist() == chosen
    expected = flt.apply(frame).head(6).reset_index(drop=True)
    pd.testing.assert_frame_equal(back, expected, check_categorical=False)
    # Every format writes the same dead letters.
    for path in (csv, lines):
        run = cli(capsys, "export", stream_name, "--dlq", "--error-type", "ValueError",
                  "--limit", "6", "--to", str(path), "--url", redis_url)  # fmt: skip
        assert run.returncode == 0, run.stderr
    assert pd.read_csv(csv)["id"].tolist() == chosen
    assert pd.read_json(lines, lines=True, dtype={"id": str})["id"].tolist() == chosen


def test_discard_archives_every_field_of_an_entry_even_a_repeated_one(
    streams_client: RedisStreamsClient, stream_name: str, redis_url: str, tmp_path, capsys
) -> None:
    # Why discard reads the DLQ again to archive: its selection holds redis-py's field dicts,
    # where a repeated field name (XADD allows it) keeps one value; the exporters read the
    # raw reply and keep both. Archiving from the selection would delete the other value.
    from streamlab.frames import read_parquet

    r = streams_client.redis
    dlq = streams_client.dlq_stream(stream_name)
    failure = Failure(error="boom", error_type="KeyError", source_stream=stream_name)
    flat = [x for pair in failure.to_fields().items() for x in pair]
    entry = r.execute_command("XADD", dlq, "*", "note", "first", "note", "second", *flat)
    archive = tmp_path / "kept.parquet"
    run = cli(capsys, "discard", stream_name, "--archive", str(archive), "--yes",
              "--url", redis_url)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert r.xlen(dlq) == 0
    back = read_parquet(archive)
    assert back["id"].tolist() == [entry.decode()]
    assert back[["note", "note_field"]].values.tolist() == [["first", "second"]]


def test_out_of_range_numbers_are_usage_errors_naming_the_flag(
    streams_client: RedisStreamsClient, stream_name: str, redis_url: str, capsys
) -> None:
    streams_client.add_many(stream_name, sample_events(5))
    for flags, *says in (
        (("metrics", "--stream", stream_name, "--port", "99999"),
         "argument --port: must be <= 65535, got 99999"),
        (("server", "--port", "-1"), "argument --port: must be >= 0, got -1"),
        (("trim", stream_name, "--maxlen", "-1"), "argument --maxlen: must be >= 0"),
        (("trim", stream_name, "--maxlen", str(2**63)),
         f"argument --maxlen: must be <= {2**63 - 1}, got {2**63}"),
        (("trim", stream_name, "--minid", f"1-{2**64}"), "argument --minid: ", "out of range"),
        (("read", stream_name, "--limit", "-3"), "argument --limit: must be >= 1, got -3"),
        (("info", stream_name, "--timeout", "1e308"),
         "argument --timeout: must be <= 86400, got 1e+308"),
        (("replay", stream_name, "--rate", "1e-300"),
         "argument --rate: must be >= 0.001, got 1e-300"),
        (("replay", stream_name, "--batch-size", "x"), "argument --batch-size: expected a whole"),
        (("demo", "--events", "2"), "argument --events: must be >= 3, got 2"),
        (("demo", "--seed", "x"), "argument --seed: expected a whole number"),
    ):  # fmt: skip
        run = cli(capsys, *flags, "--url", redis_url) if flags[0] != "server" else cli(
            capsys, *flags)  # fmt: skip
        line = assert_one_line_error(run, 2, *says)
        assert "unexpected" not in line
        assert "refused" not in line
    assert streams_client.redis.xlen(stream_name) == 5  # trim removed nothing


def test_show_names_the_entry_id_argument(
    streams_client: RedisStreamsClient, stream_name: str, redis_url: str, capsys
) -> None:
    streams_client.add_many(stream_name, sample_events(1))
    for bad, says in (("garbage", "is not a stream id"), (f"1-{2**64}", "out of range")):
        run = cli(capsys, "show", stream_name, bad, "--url", redis_url)
        line = assert_one_line_error(run, 2, f"argument id: {bad!r}", says)
        assert "since" not in line


def test_a_time_without_a_zone_reads_as_a_cli_message(
    streams_client: RedisStreamsClient, stream_name: str, redis_url: str, capsys
) -> None:
    dlq = streams_client.dlq_stream(stream_name)
    dead_letters(streams_client, dlq, 2, stream_name)
    for command in (("read", stream_name), ("dlq", stream_name), ("replay", stream_name),
                    ("discard", stream_name, "--yes")):  # fmt: skip
        for flag in ("--since", "--until"):
            run = cli(capsys, *command, flag, "2020-01-01T00:00", "--url", redis_url)
            line = assert_one_line_error(
                run, 2, f"argument {flag}: '2020-01-01T00:00' has no time zone; "
                "add one ('2020-01-01T00:00Z') (or a duration like 1h)"
            )  # fmt: skip
            assert "datetime" not in line
    assert streams_client.redis.xlen(dlq) == 2
    for value, says in (
        ("2020-01-01", "'2020-01-01' has no time zone; add one ('2020-01-01T00:00:00Z')"),
        ("garbage", "'garbage' is neither a stream id, milliseconds nor a time with a zone"),
        (str(2**64), "out of range"),
    ):
        run = cli(capsys, "read", stream_name, "--since", value, "--url", redis_url)
        assert "unexpected" not in assert_one_line_error(run, 2, "argument --since: ", says)
    # What the flags take: a duration (one reaching back before the year 1 means from the
    # first entry, as in Python), an aware time, an id or its milliseconds.
    for value in ("1h", "200000000h", "2020-01-01T00:00Z", "0-1", "0"):
        run = cli(capsys, "read", stream_name, "--since", value, "--url", redis_url)
        assert run.returncode == 0, run.stderr


def test_a_bad_min_idle_is_a_usage_error_naming_it(
    streams_client: RedisStreamsClient, stream_name: str, redis_url: str, capsys
) -> None:
    streams_client.ensure_group(stream_name, "g")
    streams_client.add_many(stream_name, sample_events(3))
    streams_client.read_from_stream(stream_name, "g", "c1", 3)
    for command in (("pending", stream_name, "g"), ("claim", stream_name, "g", "c2", "--all")):
        run = cli(capsys, *command, "--min-idle", "nonsense", "--url", redis_url)
        line = assert_one_line_error(run, 2, "argument --min-idle: invalid duration 'nonsense'")
        assert "unexpected" not in line
    pending = streams_client.redis.xpending_range(stream_name, "g", "-", "+", 10)
    assert {p["consumer"] for p in pending} == {b"c1"}  # nothing was claimed


def test_pending_reads_only_the_rows_it_shows_and_totals_from_the_summary(
    streams_client: RedisStreamsClient, stream_name: str, redis_url: str, capsys
) -> None:
    from streamlab.client import replies_as_sent
    from streamlab.records import PendingSummary

    r = streams_client.redis
    streams_client.ensure_group(stream_name, "g")
    ids = streams_client.add_many(stream_name, sample_events(2100))  # more than a page (2000)
    r.xreadgroup("g", "c1", {stream_name: ">"}, count=2096)
    r.xreadgroup("g", "c2", {stream_name: ">"}, count=4)
    # Idle ten minutes, without waiting: XCLAIM to their own owner with IDLE (JUSTID keeps the
    # delivery count).
    r.xclaim(stream_name, "g", "c1", 0, [ids[1], ids[3]], idle=600_000, justid=True)
    r.xclaim(stream_name, "g", "c2", 0, [ids[2097]], idle=600_000, justid=True)

    # The summary's two shapes: redis-py's dict and the raw reply.
    summary = PendingSummary.from_reply(r.xpending(stream_name, "g"))
    assert summary == PendingSummary(2100, ids[0], ids[-1], {"c1": 2096, "c2": 4})
    raw = replies_as_sent(r, "XPENDING").execute_command("XPENDING", stream_name, "g")
    assert PendingSummary.from_reply(raw) == summary
    assert (summary.held_by("c2"), summary.held_by("nobody")) == (4, 0)

    def pending(*flags: str) -> dict:
        run = cli(capsys, "pending", stream_name, "g", *flags, "--url", redis_url, "--json")
        assert run.returncode == 0, run.stderr
        return dict(json.loads(run.stdout))

    def shown(doc: dict) -> list[str]:
        return [p["id"] for p in doc["pending"]]

    r.config_resetstat()
    doc = pending("--limit", "3")
    assert (doc["count"], doc["total"], shown(doc)) == (3, 2100, ids[:3])
    # One XPENDING page of 3 rows and the summary, one XRANGE for their fields: not the whole
    # pending list (two pages, an XRANGE each).
    stats = r.info("commandstats")
    assert (stats["cmdstat_xpending"]["calls"], stats["cmdstat_xrange"]["calls"]) == (2, 1)
    text = cli(capsys, "pending", stream_name, "g", "--limit", "3", "--url", redis_url).stdout
    assert f"{stream_name} g: showing 3 of 2100" in text

    doc = pending("--consumer", "c2", "--limit", "2")
    assert (doc["count"], doc["total"], shown(doc)) == (2, 4, ids[2096:2098])
    assert {p["consumer"] for p in doc["pending"]} == {"c2"}
    assert pending("--consumer", "nobody")["total"] == 0

    # XPENDING's summary cannot count what is idle long enough: the total is unknown.
    doc = pending("--min-idle", "5m", "--limit", "1")
    assert (doc["count"], doc["total"], shown(doc)) == (1, None, [ids[1]])
    doc = pending("--min-idle", "5m")
    assert (doc["total"], shown(doc)) == (None, [ids[1], ids[3], ids[2097]])
    doc = pending("--min-idle", "5m", "--consumer", "c2")
    assert (doc["total"], shown(doc)) == (None, [ids[2097]])
    run = cli(capsys, "pending", stream_name, "g", "--min-idle", "5m", "--limit", "2",
              "--url", redis_url)  # fmt: skip
    assert run.stdout.splitlines()[0] == f"{stream_name} g: showing 2"


def test_claim_reads_its_replies_through_the_records(
    streams_client: RedisStreamsClient, stream_name: str, redis_url: str, capsys
) -> None:
    from streamlab.records import AutoClaimPage, claimed_ids

    # The reply shapes: raw RESP (bytes), redis-py's parsed entries, JUSTID ids, Redis 6.2's
    # XAUTOCLAIM without a deleted list, an entry deleted before an XCLAIM.
    page = AutoClaimPage.from_reply([b"5-0", [[b"1-0", [b"k", b"v"]], [b"2-0", None]], [b"3-0"]])
    assert page == AutoClaimPage("5-0", ["1-0", "2-0"], ["3-0"])
    assert not page.done
    parsed = AutoClaimPage.from_reply(["0-0", [("1-0", {"k": "v"})]])
    assert parsed == AutoClaimPage("0-0", ["1-0"], [])
    assert AutoClaimPage.from_reply([b"0-0", [b"1-0"], []]).done
    assert claimed_ids([b"1-0", "2-0", (b"3-0", {}), (None, None)]) == ["1-0", "2-0", "3-0"]

    streams_client.ensure_group(stream_name, "g")
    streams_client.add_many(stream_name, sample_events(4))
    [a, b, *rest] = [m.id for m in streams_client.read_from_stream(stream_name, "g", "c1", 4)]
    url = ("--url", redis_url, "--json")
    run = cli(capsys, "claim", stream_name, "g", "c2", a, b, "--min-idle", "0", *url)
    assert json.loads(run.stdout)["ids"] == [a, b]
    every = json.loads(cli(capsys, "claim", stream_name, "g", "c3", "--all", "--min-idle", "0",
                           *url).stdout)  # fmt: skip
    assert every["ids"] == [a, b, *rest]
    assert every["count"] == 4
    run = cli(capsys, "claim", stream_name, "g", "c2", "garbage", "--min-idle", "0", *url)
    assert_one_line_error(run, 2, "argument ids: 'garbage' is not a stream id")


def test_other_bad_input_found_by_probing_is_one_line(
    streams_client: RedisStreamsClient, stream_name: str, redis_url: str, tmp_path, capsys
) -> None:
    streams_client.add_many(stream_name, sample_events(2))
    missing = tmp_path / "no-such-folder"
    for name in ("x.csv", "x.parquet"):
        run = cli(capsys, "export", stream_name, "--to", str(missing / name), "--url", redis_url)
        assert_one_line_error(run, 1, f"cannot write {missing / name}: no folder {missing}")
    url = redis_url.replace("redis://", "rediss://", 1)
    run = cli(capsys, "info", stream_name, "--url", url, "--tls-ca", str(tmp_path / "ca.pem"))
    assert_one_line_error(run, 2, f"--tls-ca {tmp_path / 'ca.pem'}: no such file")
