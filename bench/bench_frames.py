"""Benchmark of the DataFrame exporters against hand-written redis-py, in one run, on one server.

    .venv/bin/python bench/bench_frames.py                      # 10k and 100k entries
    .venv/bin/python bench/bench_frames.py --sizes 10000 100000 1000000 --pending 10000 200000

Starts its own EmbeddedServer (never the one on 6379). Prints, per size:

- stream_to_dataframe vs the baseline (XRANGE pages, json.loads per entry, pd.json_normalize),
  vs the bare fetch (the same XRANGE pages, no decoding: through redis-py's ``xrange``, and as
  raw replies without redis-py's per-entry dicts);
- peak memory of stream_to_dataframe, measured in a fresh child process as the growth of its
  peak RSS (VmHWM, reset through /proc/self/clear_refs just before the call) against the
  frame's ``memory_usage(deep=True)`` (tracemalloc cannot see Arrow's allocations);
- pending_to_dataframe vs a loop that fetches each pending entry's fields by id;
- export_parquet's peak memory (same RSS measure) at each size, chunks of 50,000 rows:
  constant once the stream is larger than a chunk.

The fetches and the exporter take turns, round after round (best of each kept), so that a
machine busy with other work slows every side alike.

Targets (issue 3): >= 4x baseline, peak <= 2.5x frame; pending >= 5x. Issue 9: >= 1.0x the
bare raw fetch, >= 2x redis-py's xrange (bare), peak <= 2x the frame at 1M.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
import redis

from streamlab.client import RedisStreamsClient
from streamlab.embedded import EmbeddedServer
from streamlab.events import encode_event
from streamlab.frames import export_parquet, pending_to_dataframe, stream_to_dataframe
from streamlab.samples import sample_events

STREAM = "bench:frames"
PENDING = "bench:pending"
PAGE = 10_000
PARQUET_CHUNK = 50_000


def best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Best wall time of ``repeat`` runs, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        result = None
        gc.collect()
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def interleaved(
    fns: dict[str, Callable[[], Any]], repeat: int, rows: int | None = None
) -> dict[str, float]:
    """Best wall time of each of ``fns`` over ``repeat`` rounds in which they take turns; each
    result (an int or a frame) must count ``rows``, and is freed after the clock stops."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            gc.collect()
            start = time.perf_counter()
            result = fn()
            times[name].append(time.perf_counter() - start)
            got = result if isinstance(result, int) else len(result)
            assert rows is None or got == rows, (name, got, rows)
            del result
    return {name: min(t) for name, t in times.items()}


def load(client: RedisStreamsClient, stream: str, have: int, want: int, seed: int) -> None:
    """Append sample events until ``stream`` holds ``want`` entries."""
    if want <= have:
        return
    events = sample_events(want - have, seed=seed + have)
    batch: list[dict[str, Any]] = []
    for event in events:
        batch.append(encode_event(event))
        if len(batch) == 50_000:
            client.add_many(stream, batch)
            batch = []
    if batch:
        client.add_many(stream, batch)


def pages(r: redis.Redis, stream: str, n: int) -> Any:
    """XRANGE pages through redis-py (a dict per entry), up to n entries."""
    start: Any = "-"
    got = 0
    while got < n:
        page = r.xrange(stream, start, "+", count=min(PAGE, n - got))
        if not page:
            return
        yield page
        got += len(page)
        start = b"(" + page[-1][0]


def bare_fetch(r: redis.Redis, stream: str, n: int) -> int:
    return sum(len(page) for page in pages(r, stream, n))


def bare_fetch_raw(raw: redis.Redis, stream: str, n: int) -> int:
    """The same pages as raw replies (no per-entry dict): the floor of any decoder."""
    start: Any = "-"
    got = 0
    while got < n:
        page = raw.execute_command("XRANGE", stream, start, "+", "COUNT", min(PAGE, n - got))
        if not page:
            break
        got += len(page)
        start = b"(" + page[-1][0]
    return got


def baseline(r: redis.Redis, stream: str, n: int) -> pd.DataFrame:
    """What one writes by hand: decode, json.loads the JSON fields, json_normalize."""
    records = []
    for page in pages(r, stream, n):
        for eid, fields in page:
            record: dict[str, Any] = {"id": eid.decode()}
            for key, value in fields.items():
                name = key.decode()
                text = value.decode()
                record[name] = json.loads(text) if name in ("payload", "auth_context") else text
            records.append(record)
    return pd.json_normalize(records)


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss() -> int:
    """VmHWM: this process's peak RSS (unlike ru_maxrss, not inherited from the parent)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def memory_child(url: str, stream: str, n: int, parquet: str | None = None) -> None:
    """Run in a fresh process: peak RSS growth during one stream_to_dataframe call, or
    during one export_parquet call when ``parquet`` names a file."""
    r = redis.Redis.from_url(url)
    stream_to_dataframe(r, stream, limit=10)  # imports and first-use costs out of the way
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = rss_now()
    if parquet:
        rows = export_parquet(r, stream, parquet, limit=n, chunk_rows=PARQUET_CHUNK)
        frame = 0
    else:
        df = stream_to_dataframe(r, stream, limit=n)
        rows, frame = len(df), int(df.memory_usage(deep=True).sum())
    peak = peak_rss() - before
    print(json.dumps({"rows": rows, "frame": frame, "peak": peak}))


def measure_memory(url: str, n: int, parquet: str | None = None) -> dict[str, int]:
    child = [sys.executable, __file__, "--memory-child", url, STREAM, str(n)]
    out = subprocess.run(
        child + ([parquet] if parquet else []),
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result: dict[str, int] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def bench_parquet(server: EmbeddedServer, sizes: list[int]) -> None:
    """The stream is loaded by bench_stream; export it at each size in a fresh process."""
    print(f"\nexport_parquet (peak RSS growth, chunks of {PARQUET_CHUNK:,} rows)")
    print(f"{'entries':>9} {'seconds':>8} {'file MB':>8} {'peak MB':>8}")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "bench.parquet")
        for n in sizes:
            started = time.perf_counter()
            mem = measure_memory(server.url, n, path)
            took = time.perf_counter() - started
            assert mem["rows"] == n
            size = os.path.getsize(path) / 1e6
            print(f"{n:>9} {took:>8.2f} {size:>8.1f} {mem['peak'] / 1e6:>8.1f}", flush=True)


def bench_stream(server: EmbeddedServer, sizes: list[int], repeat: int) -> None:
    r = server.client()
    raw = redis.Redis(connection_pool=r.connection_pool)
    raw.set_response_callback("XRANGE", lambda resp, **_: resp)
    client = RedisStreamsClient(r)
    have = 0
    print("\nstream_to_dataframe (seconds; best of --repeat rounds, taking turns; 2 above 100k)")
    header = (
        f"{'entries':>9} {'bare':>7} {'bare raw':>8} {'baseline':>9} {'frame':>7} "
        f"{'vs base':>8} {'vs bare':>8} {'vs raw':>7} {'frame MB':>9} {'peak MB':>8} "
        f"{'peak/frame':>10} {'us/entry':>8}"
    )
    rows = []
    per_entry: dict[int, float] = {}
    for n in sizes:
        load(client, STREAM, have, n, seed=0)
        have = max(have, n)
        # Above 100k: best of 2 rounds for the fetches and the frame (the first run of each
        # pays the page faults of a fresh heap), one baseline run, measured last so that its
        # garbage does not slow the others.
        # Below 100k, enough rounds for about a second of frames: a 10k frame takes ~30 ms,
        # and one interruption would otherwise be its best time.
        runs = max(repeat, 500_000 // n) if n <= 100_000 else 2
        t = interleaved(
            {
                "bare": lambda n=n: bare_fetch(r, STREAM, n),
                "raw": lambda n=n: bare_fetch_raw(raw, STREAM, n),
                "frame": lambda n=n: stream_to_dataframe(r, STREAM, limit=n),
            },
            runs,
            rows=n,
        )
        t_bare, t_raw, t_frame = t["bare"], t["raw"], t["frame"]
        mem = measure_memory(server.url, n)
        t_base, base_df = best(lambda n=n: baseline(r, STREAM, n), repeat if n <= 100_000 else 1)
        assert len(base_df) == n
        del base_df
        per_entry[n] = t_frame / n * 1e6
        rows.append(
            f"{n:>9} {t_bare:>7.2f} {t_raw:>8.2f} {t_base:>9.2f} {t_frame:>7.2f} "
            f"{t_base / t_frame:>7.1f}x {t_bare / t_frame:>7.2f}x {t_raw / t_frame:>6.2f}x "
            f"{mem['frame'] / 1e6:>9.1f} {mem['peak'] / 1e6:>8.1f} "
            f"{mem['peak'] / mem['frame']:>9.2f}x {per_entry[n]:>8.2f}"
        )
        if len(rows) == 1:
            print(header)
        print(rows[-1], flush=True)
    if len(per_entry) > 1:
        # Linear cost: the same time per entry at every size.
        low, high = min(per_entry), max(per_entry)
        print(
            f"linearity: {per_entry[low]:.2f} us per entry at {low:,}, "
            f"{per_entry[high]:.2f} at {high:,} (ratio {per_entry[low] / per_entry[high]:.2f})"
        )


def make_pending(client: RedisStreamsClient, n: int) -> None:
    """``n`` entries pending in group ``g``, spread over 4 consumers."""
    r = client.redis
    r.delete(PENDING)
    load(client, PENDING, 0, n, seed=1)
    client.ensure_group(PENDING, "g")
    read = 0
    while read < n:
        reply = r.xreadgroup("g", f"worker-{read // PAGE % 4}", {PENDING: ">"}, count=PAGE)
        read += len(reply[0][1])


def pending_baseline(r: redis.Redis, n: int) -> pd.DataFrame:
    """A loop that fetches each pending entry's fields by id (one XRANGE per id)."""
    rows = []
    start: Any = "-"
    while True:
        page = r.xpending_range(PENDING, "g", start, "+", PAGE)
        if not page:
            break
        for p in page:
            entry = r.xrange(PENDING, p["message_id"], p["message_id"])
            fields = {k.decode(): v.decode() for k, v in entry[0][1].items()} if entry else {}
            rows.append({
                "id": p["message_id"].decode(), "consumer": p["consumer"].decode(),
                "idle": p["time_since_delivered"], "deliveries": p["times_delivered"], **fields,
            })  # fmt: skip
        start = b"(" + page[-1]["message_id"]
    return pd.DataFrame(rows)


def bench_pending(server: EmbeddedServer, sizes: list[int]) -> None:
    r = server.client()
    client = RedisStreamsClient(r)
    print("\npending_to_dataframe (seconds)")
    print(f"{'pending':>9} {'per-id loop':>12} {'frame':>7} {'speedup':>8}")
    for n in sizes:
        make_pending(client, n)
        t_loop, base = best(lambda n=n: pending_baseline(r, n), 1)
        t_frame, df = best(lambda: pending_to_dataframe(r, PENDING, "g"), 2)
        assert len(base) == len(df) == n
        print(f"{n:>9} {t_loop:>12.2f} {t_frame:>7.2f} {t_loop / t_frame:>7.1f}x", flush=True)
        del base, df


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--pending", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-parquet", action="store_true", help="skip the export_parquet runs")
    parser.add_argument("--memory-child", nargs="+", metavar="URL STREAM N [PARQUET]")
    args = parser.parse_args()
    if args.memory_child:
        url, stream, n, *parquet = args.memory_child
        memory_child(url, stream, int(n), *parquet)
        return
    with EmbeddedServer() as server:
        info = server.client().info("server")
        version = info.get("redis_version")
        print(f"server: {version} ({server.binary}); python {sys.version.split()[0]}")
        bench_stream(server, sorted(args.sizes), args.repeat)
        if not args.no_parquet:
            bench_parquet(server, sorted(args.sizes))
        if args.pending:
            bench_pending(server, sorted(args.pending))


if __name__ == "__main__":
    main()
