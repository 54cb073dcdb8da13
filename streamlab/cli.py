"""The ``streamlab`` command.

``streamlab demo`` runs the whole flow on a private embedded server (no Redis needed).
``info``, ``pending`` and ``dlq`` are the seed's redis-cli debugging set with typed output;
``--json`` prints machine-readable results. The URL comes from ``--url`` or ``REDIS_URL``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from streamlab._signals import signals_set
from streamlab.errors import StreamlabError

__all__ = ["main"]


def _print(data: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return
    rows = data if isinstance(data, list) else [data]
    for row in rows:
        print("  ".join(f"{k}={v}" for k, v in row.items()))


def _client(args: argparse.Namespace) -> Any:
    from streamlab.client import RedisStreamsClient, connect_any

    url = args.url or os.environ.get("REDIS_URL")
    if not url:
        raise StreamlabError("no server: pass --url or set REDIS_URL")
    # A cluster node (--cluster, a redis+cluster:// URL, or cluster_enabled in INFO) gets a
    # cluster client, which follows MOVED to the node serving each key.
    client = RedisStreamsClient(connect_any(url, cluster=True if args.cluster else None))
    if getattr(args, "dlq", None):
        client.dlq_names[args.stream] = args.dlq
    return client


def cmd_demo(args: argparse.Namespace) -> int:
    from streamlab.demo import run_demo, server_url

    with server_url(args.url) as url:
        where = url if args.url else f"embedded server at {url}"
        if not args.json:
            print(f"streamlab demo: {args.events} webhook events on {where}")
        # A private server starts empty; on someone else's server use a fresh stream name.
        stream = None if args.url else "webhook_events"
        result = run_demo(url, events=args.events, seed=args.seed, stream=stream)
    stats = result.stats
    summary = {
        "stream": result.stream,
        "produced": result.produced,
        "acked": stats.acked,
        "retried": stats.retried,
        "dead_lettered": stats.dead_lettered,
        "dlq_length": result.dlq_length,
        "pending": result.pending,
        "failures": stats.failed,
        "dlq_errors": dict(result.dlq_errors),
        "seconds": round(result.seconds, 2),
    }
    if args.json:
        _print(summary, True)
        return 0
    print(f"  produced       {result.produced:>7}")
    print(f"  acked          {stats.acked:>7}")
    print(f"  retried        {stats.retried:>7}   (transient failures, retried with backoff)")
    print(f"  dead-lettered  {stats.dead_lettered:>7}   -> {result.dlq}")
    print(f"  still pending  {result.pending:>7}")
    for error_type, count in result.dlq_errors.most_common():
        print(f"    {count:>5} x {error_type}")
    print(f"  done in {result.seconds:.1f} s")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    info = _client(args).get_stream_info(args.stream)
    data = dataclasses.asdict(info)
    if args.json:
        _print(data, True)
        return 0
    print(f"{info.stream}: {info.length} entries, first {info.first_id}, last {info.last_id}")
    for group in info.groups:
        _print(dataclasses.asdict(group), False)
    return 0


def cmd_pending(args: argparse.Namespace) -> int:
    client = _client(args)
    rows = client.redis.xpending_range(args.stream, args.group, "-", "+", args.count)
    data = [
        {
            "id": r["message_id"].decode(),
            "consumer": r["consumer"].decode(),
            "idle_ms": r["time_since_delivered"],
            "deliveries": r["times_delivered"],
        }
        for r in rows
    ]
    _print(data, args.json)
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    client = _client(args)
    data = []
    for msg in client.read_dlq(args.stream, count=args.count):
        failure = msg.failure
        event = msg.event
        data.append(
            {
                "id": msg.id,
                "event_type": event.event_type if event else None,
                "repository": event.repository if event else None,
                "error_type": failure.error_type if failure else None,
                "error": failure.error if failure else None,
                "attempts": failure.attempts if failure else None,
            }
        )
    _print(data, args.json)
    return 0


def _when(value: str | None) -> Any:
    """``6h``-style durations mean "that long ago"; anything else is an ISO time or stream id.

    Bare digits are a stream id's time part (milliseconds), as in `select_dlq`: a pasted
    ``1795839300822`` must not be read as that many seconds ago.
    """
    if value is None or value.strip().isdigit():
        return value
    from streamlab.config import parse_duration

    try:
        return parse_duration(value)
    except ValueError:
        return value


def _confirm(prompt: str) -> bool:
    if not sys.stdin.isatty():
        raise StreamlabError("refusing to replay without a terminal to confirm: pass --yes")
    return input(f"{prompt} [y/N] ").strip().lower() in ("y", "yes")


# A replay cancelled by Ctrl-C exits like a shell command killed by SIGINT.
EXIT_INTERRUPTED = 128 + signal.SIGINT


def cmd_replay(args: argparse.Namespace) -> int:
    """Select, dry-run, confirm, replay; Ctrl-C stops between batches (exit code 130)."""
    from streamlab.replay import replay_dlq, select_dlq

    client = _client(args)
    selection = select_dlq(
        client,
        args.stream,
        event_types=args.event_type,
        tenants=args.tenant,
        repositories=args.repo,
        error_types=args.error_type,
        error_contains=args.error_contains,
        since=_when(args.since),
        until=_when(args.until),
        ids=args.id,
        limit=args.limit,
    )
    options: dict[str, Any] = {
        "target": args.target,
        "keep_in_dlq": args.keep_in_dlq,
        "batch_size": args.batch_size,
    }
    if args.all_groups:
        options["for_group"] = None
    elif args.for_group:
        options["for_group"] = args.for_group
    plan = replay_dlq(client, args.stream, selection, dry_run=True, **options)
    if args.dry_run or not plan.replayed:
        _report(plan, args.json)
        return 0
    if not args.yes:
        print(selection)
        print(plan)
        if not _confirm(f"replay {len(plan.replayed):,} events?"):
            print("nothing replayed")
            return 1
    cancel = threading.Event()
    with signals_set(cancel, signal.SIGINT):  # Ctrl-C: stop between batches
        report = replay_dlq(
            client, args.stream, selection, rate=args.rate, cancel=cancel, **options
        )
    _report(report, args.json)
    if report.cancelled:
        return EXIT_INTERRUPTED
    return 0 if report.ok else 1


def _report(report: Any, as_json: bool) -> None:
    if not as_json:
        print(report)
        return
    data = {
        "replay_id": report.replay_id,
        "dry_run": report.dry_run,
        "selected": len(report.selected),
        "replayed": report.replayed,
        "skipped": report.skipped,
        "failed": report.failed,
        "mapping": report.mapping,
        "cancelled": report.cancelled,
        "remaining": report.remaining,
        "duration": report.duration.total_seconds(),
    }
    _print(data, True)


def cmd_outcome(args: argparse.Namespace) -> int:
    from streamlab.replay import replay_outcome

    frame = replay_outcome(_client(args), args.stream, args.replay_id)
    if args.json:
        print(frame.to_json(orient="records", date_format="iso", indent=2))
    else:
        print(frame["state"].value_counts().to_string())
    return 0


DLQ_HELP = "the DLQ stream, when it is not <stream>_dlq (a configured dlq_stream)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``streamlab`` command."""
    parser = argparse.ArgumentParser(prog="streamlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--url", default=None, help="redis:// URL (default: REDIS_URL)")
        p.add_argument("--json", action="store_true", help="print JSON")
        if name != "demo":
            p.add_argument(
                "--cluster",
                action="store_true",
                help="the URL is a Redis Cluster node (found by itself from INFO otherwise)",
            )
        return p

    demo = command("demo", "produce, consume, retry and dead-letter on an embedded server")
    demo.add_argument("--events", type=int, default=3000)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)
    info = command("info", "stream length, first/last ids and groups with lag")
    info.add_argument("stream")
    info.set_defaults(func=cmd_info)
    pending = command("pending", "pending entries of a group (XPENDING)")
    pending.add_argument("stream")
    pending.add_argument("group")
    pending.add_argument("--count", type=int, default=100)
    pending.set_defaults(func=cmd_pending)
    dlq = command("dlq", "dead-lettered entries with their failures")
    dlq.add_argument("stream", help="the source stream (its DLQ is <stream>_dlq)")
    dlq.add_argument("--dlq", help=DLQ_HELP)
    dlq.add_argument("--count", type=int, default=100)
    dlq.set_defaults(func=cmd_dlq)

    replay = command("replay", "re-inject DLQ events (shows a dry run and asks first)")
    replay.add_argument("stream", help="the source stream (its DLQ is <stream>_dlq)")
    replay.add_argument("--dlq", help=DLQ_HELP)
    for flag, dest in (
        ("--event-type", "event_type"),
        ("--tenant", "tenant"),
        ("--repo", "repo"),
        ("--error-type", "error_type"),
        ("--id", "id"),
    ):
        replay.add_argument(flag, dest=dest, action="append", help="repeatable; values OR")
    replay.add_argument("--error-contains")
    when = "an ISO time, or a DLQ stream id (or its milliseconds part)"
    replay.add_argument("--since", help=f"6h (that long ago), {when}")
    replay.add_argument("--until", help=f"6h (that long ago), {when}")
    replay.add_argument("--limit", type=int)
    replay.add_argument("--target", help="stream to inject into (default: each source stream)")
    replay.add_argument("--keep-in-dlq", action="store_true")
    groups = replay.add_mutually_exclusive_group()
    groups.add_argument("--for-group", help="only this group handles the replayed events")
    groups.add_argument("--all-groups", action="store_true", help="every group sees them")
    replay.add_argument("--rate", type=float, help="events per second")
    replay.add_argument("--batch-size", type=int, default=500)
    replay.add_argument("--dry-run", action="store_true", help="report only, write nothing")
    replay.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    replay.set_defaults(func=cmd_replay)
    outcome = command("outcome", "what became of the events of a replay run")
    outcome.add_argument("stream")
    outcome.add_argument("replay_id")
    outcome.add_argument("--dlq", help=DLQ_HELP)
    outcome.set_defaults(func=cmd_outcome)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``streamlab`` console script."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except StreamlabError as exc:
        print(f"streamlab: error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
