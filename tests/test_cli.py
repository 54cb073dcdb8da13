"""The `streamlab` command, run as a user runs it."""

import json
import re
import signal
import subprocess
import sys
import time

from streamlab.client import RedisStreamsClient
from streamlab.demo import BROKEN_REPOSITORY
from streamlab.events import Failure, encode_event
from streamlab.samples import sample_events


def streamlab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamlab.cli", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_demo_on_its_own_embedded_server_accounts_for_every_event() -> None:
    run = streamlab("demo", "--events", "400", "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    broken = sum(
        1
        for e in sample_events(400)
        if e.repository == BROKEN_REPOSITORY and e.event_type.endswith("pull_request")
    )
    assert broken > 0
    assert result["produced"] == 400
    assert result["dead_lettered"] == result["dlq_length"] == broken
    assert result["acked"] == 400 - broken
    assert result["pending"] == 0
    assert result["retried"] > 3 * broken  # the transient failures were retried too
    assert result["dlq_errors"] == {"SchemaError": broken}


def test_demo_text_output_on_an_external_server_uses_a_fresh_stream(redis_url: str) -> None:
    run = streamlab("demo", "--events", "200", "--url", redis_url)
    assert run.returncode == 0, run.stderr
    assert "produced" in run.stdout
    assert "webhook_events:demo-" in run.stdout


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

    pending = json.loads(
        streamlab("pending", stream_name, "g", "--url", redis_url, "--json").stdout
    )
    assert [(p["consumer"], p["deliveries"]) for p in pending] == [("c1", 1), ("c1", 1)]

    dlq = json.loads(streamlab("dlq", stream_name, "--url", redis_url, "--json").stdout)
    assert [(d["error_type"], d["error"]) for d in dlq] == [("ValueError", "boom")]

    # A DLQ configured under another name (dlq_stream) is read with --dlq.
    streams_client.redis.xadd(f"{stream_name}:failed", fields)
    args = ["dlq", stream_name, "--dlq", f"{stream_name}:failed", "--url", redis_url, "--json"]
    assert [d["error"] for d in json.loads(streamlab(*args).stdout)] == ["boom"]


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
    assert len(json.loads(outcome.stdout)) == 3


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
