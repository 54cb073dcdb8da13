"""Helpers the fault scenarios share: worker processes, bounded waits, producers, CPU time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis

from faults.ledger import HandledLog
from streamlab.client import RedisStreamsClient, connect
from streamlab.events import StreamEvent

# The ``fault_report`` fixture (tests/conftest.py).
FaultReport = Callable[..., None]
WORKER = Path(__file__).parent.parent / "workers.py"
GROUP = "g"
SPAWNED: list[subprocess.Popen[str]] = []


def spawn(
    url: str, stream: str, consumer: str, mode: str, *args: str, group: str = GROUP
) -> subprocess.Popen[str]:
    """A worker process (``tests/workers.py``); its stdout (the run's stats) and stderr piped.

    A worker still running when its test ends (the test failed) is SIGKILLed by the
    ``reap_workers`` fixture (tests/faults/conftest.py).
    """
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), url, stream, group, consumer, mode, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    SPAWNED.append(proc)
    return proc


def reap() -> None:
    """SIGKILL and reap every worker `spawn` started that is still running."""
    while SPAWNED:
        proc = SPAWNED.pop()
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def kill(proc: subprocess.Popen[str]) -> None:
    """SIGKILL a worker and reap it."""
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)


def stop(proc: subprocess.Popen[str], timeout: float = 20.0) -> tuple[str, str]:
    """SIGTERM a worker and wait for it to settle what it holds; its stdout and stderr."""
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-2000:]
    return out, err


def wait_for(
    condition: Callable[[], bool],
    timeout: float = 15.0,
    what: str = "",
    alive: Sequence[subprocess.Popen[str]] = (),
) -> None:
    """Poll ``condition`` every 20 ms until it holds; fail after ``timeout`` seconds, or as
    soon as one of the ``alive`` processes has exited (with its stderr)."""
    deadline = time.monotonic() + timeout
    while not condition():
        for proc in alive:
            if proc.poll() is not None:
                _, err = proc.communicate()
                raise AssertionError(f"worker exited ({proc.returncode}): {err[-2000:]}")
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)


def add(client: RedisStreamsClient, stream: str, n: int, event_type: str = "push") -> list[str]:
    return client.add_many(stream, (StreamEvent(event_type=event_type) for _ in range(n)))


def drained(r: redis.Redis, stream: str, group: str = GROUP) -> bool:
    """Nothing pending and nothing left to deliver in ``group``."""
    try:
        info = r.xinfo_groups(stream)
    except redis.ResponseError:
        return False
    for g in info:
        if g["name"].decode() == group:
            return int(g["pending"]) == 0 and g.get("lag") == 0
    return False


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


class Producer:
    """A thread adding events to a stream until stopped, riding out errors (a server that
    restarts, a killed connection): only ids an add returned are kept, as the ledger counts."""

    def __init__(self, url: str, stream: str, *, fail_every: int = 0, pause: float = 0.002) -> None:
        self.url = url
        self.stream = stream
        self.fail_every = fail_every
        self.pause = pause
        self.ids: list[str] = []
        self.failing: list[str] = []
        self.errors: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Producer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(timeout=20)
        assert not self._thread.is_alive(), "the producer did not stop"
        return self.ids

    def wait_until(self, n: int, timeout: float = 15.0) -> None:
        wait_for(lambda: len(self.ids) >= n, timeout, f"{n} events produced")

    def _run(self) -> None:
        client = RedisStreamsClient(connect(self.url, socket_connect_timeout=1))
        n = 0
        while not self._stop.is_set():
            failing = bool(self.fail_every) and n % self.fail_every == 0
            event = StreamEvent(event_type="fail" if failing else "push")
            try:
                entry_id = client.add_to_stream(self.stream, event)
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
                self.errors[type(exc).__name__] += 1
                self._stop.wait(0.05)
                continue
            self.ids.append(entry_id)
            if failing:
                self.failing.append(entry_id)
            n += 1
            if self.pause:
                self._stop.wait(self.pause)
        client.redis.close()


def handled(*logs: HandledLog | Path) -> Counter[str]:
    """How often each id was handled, over the logs of several workers."""
    total: Counter[str] = Counter()
    for log in logs:
        total += (log if isinstance(log, HandledLog) else HandledLog(log)).counts()
    return total
