"""A worker process for the fault tests: runs one `Consumer` on a real server.

Usage: ``python tests/workers.py URL STREAM GROUP CONSUMER MODE [options]``

Modes (the handler the worker runs):

- ``block``: writes ``--ready`` once it holds a message, then blocks forever (to be SIGKILLed
  while holding its whole batch);
- ``poison``: SIGKILLs its own process on an entry whose ``event_type`` is ``poison``;
  appends every other handled id to ``--out``;
- ``flaky``: fails for good on one event in ``--permanent-every`` (default twenty, by a hash
  of the event id) and on the first attempt only for one in ten; appends each success to
  ``--out`` (the soak test);
- ``slow``: sleeps ``--sleep`` seconds per message, then appends its id to ``--out``; writes
  ``--ready`` after the first message (for SIGTERM tests);
- ``reject``: rejects (straight to the DLQ) every entry whose ``event_type`` is ``fail`` and
  that is not a replay (no ``streamlab:replay_of`` field); handles the others like ``slow``.

``--handler-timeout`` and ``--shutdown-grace`` (seconds) set the consumer's fields of those names.

Every handled id is appended to ``--out`` (one line, flushed) when the handler returns. At
exit the worker prints its `RunStats` as JSON on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from streamlab.backoff import Backoff
from streamlab.client import RedisStreamsClient, connect
from streamlab.consumer import Consumer, ConsumerConfig
from streamlab.errors import Reject
from streamlab.events import StreamMessage


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    for name in ("url", "stream", "group", "consumer"):
        parser.add_argument(name)
    parser.add_argument("mode", choices=("block", "poison", "slow", "flaky", "reject"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--ready", type=Path)
    parser.add_argument("--sleep", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=5)
    parser.add_argument("--max-retries", type=int, default=3)
    parser.add_argument("--claim-min-idle", type=float, default=5.0)
    parser.add_argument("--backoff-initial", type=float, default=1.0)
    parser.add_argument("--block-duration", type=float, default=0.5)
    parser.add_argument("--permanent-every", type=int, default=20)
    parser.add_argument("--burst", action="store_true")
    parser.add_argument("--handler-timeout", type=float)
    parser.add_argument("--shutdown-grace", type=float, default=10.0)
    return parser.parse_args(argv)


def record(path: Path | None, entry_id: str) -> None:
    if path is not None:
        with path.open("a") as out:
            out.write(entry_id + "\n")


def make_handler(args: argparse.Namespace) -> Callable[[StreamMessage], None]:
    def block(msg: StreamMessage) -> None:
        if args.ready is not None:
            args.ready.write_text(msg.id)
        while True:
            time.sleep(60)

    def poison(msg: StreamMessage) -> None:
        if msg.event is not None and msg.event.event_type == "poison":
            os.kill(os.getpid(), signal.SIGKILL)
        record(args.out, msg.id)

    def slow(msg: StreamMessage) -> None:
        time.sleep(args.sleep)
        record(args.out, msg.id)
        if args.ready is not None and not args.ready.exists():
            args.ready.write_text(msg.id)

    def flaky(msg: StreamMessage) -> None:
        assert msg.event is not None
        kind = flaky_kind(msg.event.id, args.permanent_every)
        if kind == "permanent":
            raise ValueError(f"cannot process {msg.event.id}")
        if kind == "transient" and msg.delivery_count == 1:
            raise TimeoutError("upstream timed out")
        record(args.out, msg.id)

    def reject(msg: StreamMessage) -> None:
        replay = "streamlab:replay_of" in msg.fields
        if msg.event is not None and msg.event.event_type == "fail" and not replay:
            raise Reject("fails until replayed")
        slow(msg)

    modes = {"block": block, "poison": poison, "slow": slow, "flaky": flaky, "reject": reject}
    return modes[args.mode]


def flaky_kind(event_id: str, permanent_every: int = 20) -> str:
    """``permanent``, ``transient`` or ``ok``: the fate of an event in ``flaky`` mode."""
    digest = hashlib.blake2b(event_id.encode(), digest_size=2).digest()
    value = int.from_bytes(digest, "big")
    if value % permanent_every == 0:
        return "permanent"
    return "transient" if value % 10 == 1 else "ok"


def main(argv: list[str]) -> int:
    args = parse(argv)
    config = ConsumerConfig(
        stream=args.stream,
        group=args.group,
        consumer=args.consumer,
        batch_size=args.batch_size,
        max_retries=args.max_retries,
        claim_min_idle=timedelta(seconds=args.claim_min_idle),
        block_duration=timedelta(seconds=args.block_duration),
        backoff=Backoff(initial=timedelta(seconds=args.backoff_initial)),
        handler_timeout=None
        if args.handler_timeout is None
        else timedelta(seconds=args.handler_timeout),
        shutdown_grace=timedelta(seconds=args.shutdown_grace),
    )
    consumer = Consumer(RedisStreamsClient(connect(args.url)), config)
    stats = consumer.run(make_handler(args), burst=args.burst, handle_signals=True)
    print(json.dumps(dataclasses.asdict(stats)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
