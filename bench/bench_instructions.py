"""bench_core's two measures counted in CPU instructions (valgrind's callgrind), which the
machine's noise does not move: wall-clock ratios on a shared VM drift by 20% from run to run.

    .venv/bin/python bench/bench_instructions.py [N]      # N = 10,000; about 4 minutes

Each side runs in its own child process under callgrind against one private server; the
child's setup (imports, connection, the plain values, the consumer) is counted once more in
a child that stops there, and subtracted. The counts are the client's own work: the server's
share, the same for both sides (the same commands), is left out. Needs ``valgrind`` on PATH.
"""

from __future__ import annotations

import gc
import re
import shutil
import subprocess
import sys
import tempfile

import redis

# The measures themselves (this script's folder is on sys.path).
from bench_core import (
    consumer_config,
    hand_written_add,
    hand_written_consume,
    specs,
    streamlab_add,
)
from prometheus_client import CollectorRegistry

from streamlab import (
    Consumer,
    EmbeddedServer,
    PrometheusMetrics,
    RedisStreamsClient,
)

MODES = ("setup", "add-base", "add-ours", "read-base", "read-ours")


def child(mode: str, port: int, n: int) -> None:
    """One side's work (or only the setup), in a process of its own."""
    r = redis.Redis(port=port)
    client = RedisStreamsClient(r, metrics=PrometheusMetrics(CollectorRegistry()))
    values = specs(n)
    for stream in ("read-base", "read-ours"):
        r.xgroup_destroy(stream, "g")
    r.xgroup_create("read-ours", "g", id="0")
    consumer = Consumer(client, consumer_config("read-ours"))
    gc.collect()
    if mode == "add-base":
        hand_written_add(r, "add-base", values)
    elif mode == "add-ours":
        streamlab_add(client, "add-ours", values)
    elif mode == "read-base":
        hand_written_consume(r, "read-base")
    elif mode == "read-ours":
        consumer.run(lambda m: None, burst=True, handle_signals=False)
        assert consumer.stats.acked == n, consumer.stats


def instructions(mode: str, port: int, n: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        run = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={tmp}/out",
                sys.executable,
                __file__,
                "--child",
                mode,
                str(port),
                str(n),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    found = re.search(r"Collected : (\d+)", run.stderr)
    assert found, run.stderr[-2000:]
    return int(found.group(1))


def main(n: int) -> None:
    if shutil.which("valgrind") is None:
        sys.exit("bench_instructions: valgrind is not on PATH (Debian: apt install valgrind)")
    with EmbeddedServer() as server:
        r = server.client()
        values = specs(n)
        hand_written_add(r, "read-base", values)
        streamlab_add(RedisStreamsClient(r), "read-ours", values)
        for stream in ("read-base", "read-ours"):
            r.xgroup_create(stream, "g", id="0")
        counts = {}
        for mode in MODES:
            counts[mode] = instructions(mode, server.port, n)
            r.delete("add-base", "add-ours")
    setup = counts["setup"]
    per = {mode: (counts[mode] - setup) / n for mode in MODES[1:]}
    print(f"N={n}, client instructions per event (setup subtracted: {setup / n:,.0f})")
    for name in ("add", "read"):
        base, ours = per[f"{name}-base"], per[f"{name}-ours"]
        label = "add_many" if name == "add" else "consume"
        print(
            f"{label:<10} {ours:>9,.0f}  hand-written {base:>9,.0f}  "
            f"ratio {base / ours:.2f} (higher is better)"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
