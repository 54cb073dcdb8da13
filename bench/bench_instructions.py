"""bench_core's two measures counted in CPU instructions (valgrind's callgrind), which the
machine's noise does not move: wall-clock ratios on a shared VM drift by 20% from run to run.

    .venv/bin/python bench/bench_instructions.py [N]      # N = 10,000; about 4 minutes
    .venv/bin/python bench/bench_instructions.py N --cache  # also simulated cache misses

Each side runs in its own child process under callgrind against one private server; the
child's setup (imports, connection, the plain values, the consumer) is counted once more in
a child that stops there, and subtracted. The counts are the client's own work: the server's
share, the same for both sides (the same commands), is left out. Needs ``valgrind`` on PATH.
With ``--cache``, callgrind also simulates the caches and prints first-level instruction and
data misses per event (its model of a cache, not this CPU's): instructions are not the whole
cost, a miss costs a dozen cycles or more.
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


def counts(mode: str, port: int, n: int, cache: bool) -> dict[str, int]:
    """callgrind's totals for one child: ``Ir`` (instructions) and, with ``cache``, the
    simulated misses (``I1mr``, ``D1mr``, ``D1mw``, ...)."""
    with tempfile.TemporaryDirectory() as tmp:
        run = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                *(["--cache-sim=yes"] if cache else []),
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
    events = re.search(r"Events\s*:\s*(.+)", run.stderr)
    found = re.search(r"Collected\s*:\s*(.+)", run.stderr)
    assert events, run.stderr[-2000:]
    assert found, run.stderr[-2000:]
    return dict(zip(events.group(1).split(), map(int, found.group(1).split()), strict=True))


def main(n: int, cache: bool) -> None:
    if shutil.which("valgrind") is None:
        sys.exit("bench_instructions: valgrind is not on PATH (Debian: apt install valgrind)")
    with EmbeddedServer() as server:
        r = server.client()
        values = specs(n)
        hand_written_add(r, "read-base", values)
        streamlab_add(RedisStreamsClient(r), "read-ours", values)
        for stream in ("read-base", "read-ours"):
            r.xgroup_create(stream, "g", id="0")
        totals = {}
        for mode in MODES:
            totals[mode] = counts(mode, server.port, n, cache)
            r.delete("add-base", "add-ours")
    setup = totals["setup"]
    per = {mode: {k: (v - setup[k]) / n for k, v in totals[mode].items()} for mode in MODES[1:]}
    print(f"N={n}, client instructions per event (setup subtracted: {setup['Ir'] / n:,.0f})")
    for name in ("add", "read"):
        base, ours = per[f"{name}-base"], per[f"{name}-ours"]
        label = "add_many" if name == "add" else "consume"
        print(
            f"{label:<10} {ours['Ir']:>9,.0f}  hand-written {base['Ir']:>9,.0f}  "
            f"ratio {base['Ir'] / ours['Ir']:.2f} (higher is better)"
        )
        if cache:
            misses = ", ".join(
                f"{k} {ours[k]:,.0f} vs {base[k]:,.0f}" for k in ("I1mr", "D1mr", "D1mw")
            )
            print(f"{'':<10} first-level cache misses per event (ours vs hand-written): {misses}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        numbers = [a for a in sys.argv[1:] if not a.startswith("--")]
        main(int(numbers[0]) if numbers else 10_000, "--cache" in sys.argv)
