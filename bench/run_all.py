"""Run every benchmark in one command and print its ratios (each script measures its own
hand-written baseline in the same run, on its own private server).

    .venv/bin/python bench/run_all.py           # N = 50,000 push events everywhere
    .venv/bin/python bench/run_all.py 50000 --big   # also stream_to_dataframe at 1M (memory)
    .venv/bin/python bench/run_all.py 50000 --instructions  # also bench_instructions (valgrind)

Targets (issue 9): consumer >= 1.0x the hand-written XREADGROUP loop; add_many >= 1.5x the
pipelined XADD loop; stream_to_dataframe >= 1.0x the raw page fetch and >= 2x redis-py's
xrange, peak <= 2x the frame at 1M; replay >= 0.55x the non-atomic loop.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = (
    "targets: consume >= 1.0 (aim 1.2); add_many >= 1.5; stream_to_dataframe vs raw >= 1.0x, "
    "vs bare (xrange) >= 2x, peak/frame <= 2x at 1M; replay >= 0.55"
)


def run(*args: str) -> None:
    print(f"\n$ {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, *args], check=True)


def main() -> None:
    argv = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = argv[0] if argv else "50000"
    sizes = [n, "1000000"] if "--big" in sys.argv else [n]
    print(TARGETS)
    run(str(HERE / "bench_core.py"), n)
    run(str(HERE / "bench_frames.py"), "--sizes", *sizes, "--pending", "--no-parquet")
    run(str(HERE / "bench_replay.py"), n)
    if "--instructions" in sys.argv:
        run(str(HERE / "bench_instructions.py"))


if __name__ == "__main__":
    main()
