"""The long-running commands (`metrics`, `server`, `demo --keep`), run as a user runs them: in
the foreground until Ctrl-C (SIGINT) or SIGTERM. Every wait is bounded and generous."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from test_cli import assert_one_line_error, streamlab

from streamlab.client import RedisStreamsClient
from streamlab.events import encode_event
from streamlab.records import Failure
from streamlab.samples import sample_events

WAIT = 60.0  # seconds: wide, for a busy CI box; each wait returns as soon as it is met


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Running:
    """A ``streamlab`` command in the background; its output is read as it comes."""

    def __init__(self, *args: str, cwd: Path | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlab.cli", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._lines: queue.Queue[tuple[str, str]] = queue.Queue()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, "out"), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, "err"), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, pipe, name: str) -> None:
        for line in pipe:
            self._lines.put((name, line))
        pipe.close()

    def _drain(self, timeout: float) -> None:
        try:
            name, line = self._lines.get(timeout=timeout)
        except queue.Empty:
            return
        (self.out if name == "out" else self.err).append(line)

    def wait_for(self, pattern: str, where: str = "out", timeout: float = WAIT) -> re.Match[str]:
        """The first match of ``pattern`` in stdout (or stderr) lines, waiting at most
        ``timeout`` seconds; fails at once if the command exits first."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            lines = self.out if where == "out" else self.err
            for line in lines[seen:]:
                match = re.search(pattern, line)
                if match:
                    return match
            seen = len(lines)
            if self.proc.poll() is not None and self._lines.empty():
                for reader in self._readers:
                    reader.join(timeout=5)
                if self._lines.empty():
                    pytest.fail(f"exited {self.proc.returncode} before {pattern!r}: {self.text}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {pattern!r} within {timeout:g} s: {self.text}")
            self._drain(0.1)

    def stop(self, sig: signal.Signals = signal.SIGINT) -> int:
        """Send ``sig``, wait (bounded) for the exit, collect the rest of the output."""
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"still running {WAIT:g} s after {sig.name}: {self.text}")
        for reader in self._readers:
            reader.join(timeout=10)
        while not self._lines.empty():
            self._drain(0)
        return code

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    @property
    def text(self) -> str:
        return f"\nstdout:\n{self.stdout[-3000:]}\nstderr:\n{self.stderr[-3000:]}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def scrape(port: int, proc: Running, timeout: float = WAIT) -> dict[tuple[str, tuple], float]:
    """``/metrics`` as ``{(name, sorted labels): value}``, polled until it answers."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.proc.poll() is None, proc.text
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
                body = page.read().decode()
            break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                pytest.fail(f"/metrics did not answer within {timeout:g} s: {proc.text}")
            time.sleep(0.2)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name.startswith("queue_")
    }


def gone(pid: int, timeout: float = WAIT) -> bool:
    """True once no process ``pid`` runs (a zombie awaiting its reaper counts as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


def refuses(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.ConnectionError:
        return True
    finally:
        client.close()
    return False


def assert_clean_exit(code: int, proc: Running) -> None:
    assert code == 0, proc.text
    assert "Traceback" not in proc.stderr, proc.text


# -- metrics ---------------------------------------------------------------------------------


def test_metrics_serves_lag_pending_and_dlq_length_then_stops_cleanly(
    streams_client: RedisStreamsClient, stream_name: str, redis_url: str
) -> None:
    r = streams_client.redis
    other = stream_name.replace("}", "-b}")
    streams_client.ensure_group(stream_name, "workers")
    streams_client.ensure_group(stream_name, "audit")
    streams_client.add_many(stream_name, sample_events(7))
    streams_client.read_from_stream(stream_name, "workers", "w1", 3)  # 3 pending, lag 4
    failure = Failure(error="boom", error_type="KeyError", source_stream=stream_name)
    for event in sample_events(2):
        r.xadd(streams_client.dlq_stream(stream_name), {**encode_event(event),
                                                        **failure.to_fields()})  # fmt: skip
    streams_client.ensure_group(other, "g2")
    streams_client.add_many(other, sample_events(2))

    port = free_port()
    proc = Running("metrics", "--stream", stream_name, "--stream", other, "--port", str(port),
                   "--url", redis_url)  # fmt: skip
    try:
        proc.wait_for(rf"http://127\.0\.0\.1:{port}/metrics")
        got = scrape(port, proc)
        s1, s2 = ("stream", stream_name), ("stream", other)
        assert got[("queue_up", ())] == 1
        assert got[("queue_consumer_lag", (("group", "workers"), s1))] == 4
        assert got[("queue_consumer_pending", (("group", "workers"), s1))] == 3
        assert got[("queue_consumer_lag", (("group", "audit"), s1))] == 7
        assert got[("queue_consumer_pending", (("group", "audit"), s1))] == 0
        assert got[("queue_dlq_length", (s1,))] == 2
        assert got[("queue_consumer_lag", (("group", "g2"), s2))] == 2
        assert got[("queue_dlq_length", (s2,))] == 0

        # Read at scrape time: the values follow the streams.
        streams_client.read_from_stream(stream_name, "workers", "w1", 10)
        got = scrape(port, proc)
        assert got[("queue_consumer_lag", (("group", "workers"), s1))] == 0
        assert got[("queue_consumer_pending", (("group", "workers"), s1))] == 7

        code = proc.stop(signal.SIGTERM)
    finally:
        proc.close()
    assert_clean_exit(code, proc)
    assert "stopped" in proc.stderr


def test_metrics_host_limits_where_it_listens(stream_name: str, redis_url: str) -> None:
    """``--host 127.0.0.1`` listens there only: 127.0.0.2 (loopback too) is refused, where the
    default (every interface) answers on both. An address this machine lacks is one line."""
    port = free_port()
    proc = Running("metrics", "--stream", stream_name, "--port", str(port), "--url", redis_url,
                   "--host", "127.0.0.1")  # fmt: skip
    try:
        proc.wait_for(rf"  http://127\.0\.0\.1:{port}/metrics\n")
        assert scrape(port, proc)[("queue_up", ())] == 1
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.2", port), timeout=5).close()
        code = proc.stop(signal.SIGTERM)
    finally:
        proc.close()
    assert_clean_exit(code, proc)

    port = free_port()
    proc = Running("metrics", "--stream", stream_name, "--port", str(port), "--url", redis_url)
    try:
        proc.wait_for(r"on every interface")
        socket.create_connection(("127.0.0.2", port), timeout=5).close()
        code = proc.stop(signal.SIGTERM)
    finally:
        proc.close()
    assert_clean_exit(code, proc)

    run = streamlab("metrics", "--stream", stream_name, "--url", redis_url,
                    "--host", "192.0.2.1")  # fmt: skip  # TEST-NET-1: never this machine's
    assert_one_line_error(run, 1, "cannot serve on 192.0.2.1 port 9108: Cannot assign")


def test_metrics_stops_on_ctrl_c_and_refuses_a_taken_port_or_a_dead_server(
    stream_name: str, redis_url: str
) -> None:
    port = free_port()
    proc = Running("metrics", "--stream", stream_name, "--port", str(port), "--url", redis_url)
    try:
        proc.wait_for(rf":{port}/metrics")
        assert scrape(port, proc)[("queue_dlq_length", (("stream", stream_name),))] == 0
        # The port is taken now: a second one says so in one line.
        run = streamlab("metrics", "--stream", stream_name, "--port", str(port), "--url",
                        redis_url)  # fmt: skip
        assert_one_line_error(run, 1, f"cannot serve on 0.0.0.0 port {port}: Address already")
        code = proc.stop(signal.SIGINT)
    finally:
        proc.close()
    assert_clean_exit(code, proc)

    dead = f"redis://127.0.0.1:{free_port()}/0"
    run = streamlab("metrics", "--stream", stream_name, "--port", str(free_port()), "--url", dead)
    assert_one_line_error(run, 1, "cannot reach the server")


# -- server ----------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_server_prints_a_working_redis_url_and_stops_with_its_server(
    sig: signal.Signals,
) -> None:
    port = free_port()
    proc = Running("server", "--port", str(port))
    try:
        url = proc.wait_for(r"^export REDIS_URL=(\S+)$")[1]
        assert url == f"redis://127.0.0.1:{port}/0"
        pid = int(proc.wait_for(r"\(pid (\d+)\) running", where="err")[1])
        client = redis.Redis.from_url(url, socket_timeout=10)
        try:
            assert client.ping()
            entry = client.xadd("server-check", {"k": "v"})
            assert client.xrange("server-check") == [(entry, {b"k": b"v"})]
        finally:
            client.close()
        code = proc.stop(sig)
    finally:
        proc.close()
    assert_clean_exit(code, proc)
    assert proc.stdout.splitlines() == [f"export REDIS_URL={url}"]  # only the line to paste
    assert "stopped" in proc.stderr
    assert gone(pid), f"server process {pid} still runs after {sig.name}"
    assert refuses(url)


def test_server_on_a_taken_port_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        run = streamlab("server", "--port", str(taken.getsockname()[1]))
    assert_one_line_error(run, 1, "is in use")


# -- demo --keep -----------------------------------------------------------------------------


def table_row(text: str, *header: str) -> dict[str, int]:
    """The numbers under the table header made of the words ``header``."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.split() == list(header))
    return dict(zip(header, map(int, lines[at + 1].split()), strict=True))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_demo_keep_leaves_its_data_on_a_running_server_until_stopped(
    sig: signal.Signals, tmp_path: Path
) -> None:
    proc = Running("demo", "--keep", "--events", "600", cwd=tmp_path)
    try:
        stream = proc.wait_for(r"into stream '([^']+)' on an embedded server at ", timeout=90)[1]
        url = proc.wait_for(r"^\s*export REDIS_URL=(\S+)$", timeout=90)[1]
        proc.wait_for(r"keeps running; Ctrl-C stops it", timeout=90)
        out = proc.stdout
        produced = table_row(out, "produced", "acked", "retried", "dead_lettered")
        after = table_row(out, "dead_lettered", "replayed", "processed", "dlq_now")
        held = int(re.search(r"(\d+) entries are still held by worker-dead", out)[1])
        assert produced["produced"] == 600
        assert after["dead_lettered"] == produced["dead_lettered"] > 0
        assert (tmp_path / "streamlab-demo-failures.png").exists()

        client = RedisStreamsClient(redis.Redis.from_url(url, socket_timeout=10))
        try:
            r = client.redis
            dlq = client.dlq_stream(stream)
            # The stream holds what was produced plus the replayed copies; the DLQ is there,
            # emptied by the replay; the dead worker still holds what the demo said.
            assert r.xlen(stream) == produced["produced"] + after["replayed"]
            assert r.exists(dlq)
            assert r.xlen(dlq) == after["dlq_now"] == 0
            groups = {g.name: g for g in client.get_stream_info(stream).groups}
            assert groups["webhook_workers"].pending == held
            pending = r.xpending(stream, "webhook_workers")
            assert {c["name"].decode(): c["pending"] for c in pending["consumers"]} == {
                "worker-dead": held
            }
            assert f"streamlab dlq {stream} --summary" in out
            # The commands it suggests work against it from another terminal.
            env = {**os.environ, "REDIS_URL": url}
            run = subprocess.run(
                [sys.executable, "-m", "streamlab.cli", "pending", stream, "webhook_workers"],
                capture_output=True, text=True, timeout=90, check=False, env=env,
            )  # fmt: skip
            assert run.returncode == 0, run.stderr
            assert f"showing {held} of {held}" in run.stdout
        finally:
            client.redis.close()
        code = proc.stop(sig)
    finally:
        proc.close()
    assert_clean_exit(code, proc)
    assert "embedded server stopped" in proc.stderr
    assert refuses(url)
