"""The ``streamlab`` command.

``streamlab demo`` runs the whole flow on a private embedded server (no Redis needed).
``info``, ``pending`` and ``dlq`` are the seed's redis-cli debugging set with typed output;
``--json`` prints machine-readable results. The URL comes from ``--url`` or ``REDIS_URL``
(``redis://``, or ``rediss://`` for TLS with ``--tls-ca``).

Every error is one line on stderr, never a traceback: exit code 2 for a usage error (a bad
flag, URL or id), 1 for an operational one (a missing stream, an unreachable server, a refused
command, a replay whose events failed). `describe_error` is the one place that maps an
exception to its line and exit code. Passwords never appear in what the command prints.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, NoReturn, TypeVar

import redis

from streamlab._args import count, duration, entry_id, positive_number
from streamlab._redact import redact, redact_url
from streamlab._signals import signals_set
from streamlab.client import permission_error, reply_text
from streamlab.durations import parse_duration
from streamlab.errors import ArgumentError, ConfigError, StreamlabError
from streamlab.ids import bound, id_text

__all__ = ["EXIT_ERROR", "EXIT_USAGE", "UsageError", "describe_error", "main"]

EXIT_ERROR = 1  # operational: the server, the data or a run failed
EXIT_USAGE = 2  # the command line is wrong
# Connect and read timeout of the command's connections (seconds): never wait unbounded.
DEFAULT_TIMEOUT = 10.0


class UsageError(StreamlabError):
    """The command line cannot work as given (exit code 2)."""


class RunFailed(StreamlabError):
    """The command ran and its work failed; the message says why (exit code 1)."""


def _url(args: argparse.Namespace) -> str | None:
    url: str | None = args.url or os.environ.get("REDIS_URL")
    return url


def _client(args: argparse.Namespace) -> Any:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from streamlab.client import RedisStreamsClient, connect_any

    url = _url(args)
    if not url:
        raise UsageError("no server: pass --url or set REDIS_URL")
    options: dict[str, Any] = {
        "socket_connect_timeout": args.timeout,
        "socket_timeout": args.timeout,
        # One attempt: redis-py retries a refused password or a dead host with backoff.
        "retry": Retry(NoBackoff(), 0),
    }
    if args.tls_ca:
        if not url.startswith(("rediss://", "rediss+cluster://")):
            raise UsageError("--tls-ca needs a rediss:// URL")
        if not os.path.isfile(args.tls_ca):
            raise UsageError(f"--tls-ca {args.tls_ca}: no such file")
        options["ssl_ca_certs"] = args.tls_ca
    try:
        # A cluster node (--cluster, a redis+cluster:// URL, or cluster_enabled in INFO) gets a
        # cluster client, which follows MOVED to the node serving each key.
        cluster = True if getattr(args, "cluster", False) else None
        dlq = getattr(args, "dlq", None)
        return RedisStreamsClient(
            connect_any(url, cluster=cluster, **options),
            dlq_names={args.stream: dlq} if dlq else None,
        )
    except ValueError as exc:  # redis-py's URL parser
        raise UsageError(f"bad --url {redact_url(url)}: {exc}") from exc


def cmd_info(args: argparse.Namespace) -> int:
    import pandas as pd

    from streamlab._cli_commands import dump, print_frame, say

    info = _client(args).get_stream_info(args.stream)
    if args.json:
        dump(dataclasses.asdict(info))
        return 0
    say(f"{info.stream}: {info.length:,} entries, first {info.first_id}, last {info.last_id}")
    if not info.groups:
        say("no consumer groups")
        return 0
    groups = pd.DataFrame([dataclasses.asdict(g) for g in info.groups])
    cols = ["group", "consumers", "pending", "lag", "entries_read", "last_delivered_id"]
    print_frame(groups.rename(columns={"name": "group"}), cols)
    return 0


def _confirm(prompt: str) -> bool:
    if not sys.stdin.isatty():
        raise UsageError("refusing to go on without a terminal to confirm: pass --yes")
    return input(f"{prompt} [y/N] ").strip().lower() in ("y", "yes")


# A replay cancelled by Ctrl-C exits like a shell command killed by SIGINT.
EXIT_INTERRUPTED = 128 + signal.SIGINT


def cmd_replay(args: argparse.Namespace) -> int:
    """Select, dry-run, confirm, replay; Ctrl-C stops between batches (exit code 130)."""
    from streamlab._cli_commands import dlq_filter
    from streamlab.replay import replay_dlq, select_dlq

    client = _client(args)
    selection = select_dlq(client, args.stream, dlq_filter(args), since=args.since,
                           until=args.until, limit=args.limit)  # fmt: skip
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
        if not args.json:
            print(selection)  # what was selected, then what would happen to it
        _report(plan, args.json)
        _check_failed(plan)
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
    _check_failed(report)
    return 0


def _check_failed(report: Any) -> None:
    """Raise `RunFailed` saying why when events of the run failed (they stay in the DLQ)."""
    if not report.failed:
        return
    first, reason = next(iter(report.failed.items()))
    failed, selected = len(report.failed), len(report.selected)
    share = f"all {selected:,}" if failed == selected else f"{failed:,} of {selected:,}"
    raise RunFailed(
        f"{share} selected events "
        f"{'would fail' if report.dry_run else 'failed'} and stay in the DLQ; "
        f"first {first}: {reason}"
    )


def _report(report: Any, as_json: bool) -> None:
    if not as_json:
        print(report)
        return
    # Each outcome under its name (ids, or id -> reason), its size under the same name in
    # "counts": the shape every --json document gives a list and its count.
    outcomes = ("selected", "replayed", "skipped", "failed", "remaining")
    data = {
        "stream": report.stream,
        "dlq": report.dlq,
        "replay_id": report.replay_id,
        "dry_run": report.dry_run,
        "counts": {name: len(getattr(report, name)) for name in outcomes},
        **{name: getattr(report, name) for name in outcomes},
        "mapping": report.mapping,
        "cancelled": report.cancelled,
        "duration": report.duration.total_seconds(),
    }
    from streamlab._cli_commands import dump

    dump(data)


def cmd_outcome(args: argparse.Namespace) -> int:
    from streamlab._cli_commands import dump, print_frame, records
    from streamlab.replay import replay_outcome

    frame = replay_outcome(_client(args), args.stream, args.replay_id, dlq=args.dlq)
    states = frame["state"].value_counts()
    states = states[states > 0]
    if args.json:
        dump({"stream": args.stream, "replay_id": args.replay_id, "count": len(frame),
              "states": {str(k): int(v) for k, v in states.items()},
              "events": records(frame)})  # fmt: skip
    else:
        title = f"replay {args.replay_id} of {args.stream}: {len(frame):,} events (per group)"
        table = states.rename_axis("state").reset_index(name="events")
        print_frame(table, ["state", "events"], title=title)
    return 0


DLQ_HELP = "the DLQ stream, when it is not <stream>_dlq (a configured dlq_stream)"


# -- argument types: a bad value is a usage error naming its flag, before anything is read --


_T = TypeVar("_T")
_NAME = "value"  # the argument name _checked gives a check; argparse names the flag itself


def _checked(check: Callable[[str, str], _T]) -> Callable[[str], _T]:
    """The argparse type of ``check(name, text)``, a check of the library's that raises
    `ArgumentError` naming its argument (`streamlab._args`, `streamlab.ids`): its message,
    without that name, is the usage error, which argparse prints after the flag's name."""

    def convert(text: str) -> _T:
        try:
            return check(_NAME, text)
        except ArgumentError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{_NAME}: ")) from None

    convert.__name__ = check.__name__
    return convert


def _whole(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ArgumentError(f"{name}: expected a whole number, got {text!r}") from None


def _real(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ArgumentError(f"{name}: expected a number, got {text!r}") from None


def _whole_number(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """The argparse type of an integer flag from ``minimum`` to ``maximum`` (None: no bound),
    as `streamlab._args.count` checks them."""

    def whole_number(name: str, text: str) -> int:
        return count(name, _whole(name, text), minimum=minimum, maximum=maximum)

    return _checked(whole_number)


_integer = _checked(_whole)
_positive_int = _whole_number(1)
_non_negative_int = _whole_number(0, 2**63 - 1)  # what Redis takes as a count
_port = _whole_number(0, 65535)  # 0: any free port


def _positive_number(
    minimum: float | None = None, maximum: float | None = None
) -> Callable[[str], float]:
    """The argparse type of a flag taking a finite number above 0, within the bounds given,
    as `streamlab._args.positive_number` checks them."""

    def number(name: str, text: str) -> float:
        return positive_number(name, _real(name, text), minimum=minimum, maximum=maximum)

    return _checked(number)


# A slow replay waits about 1 / rate seconds between events: at most 1000 s, not 1e300 (which
# no wait can take).
_rate = _positive_number(minimum=0.001)
_seconds = _positive_number(maximum=86_400.0)  # a day: longer than any reply is worth


def time_bound(name: str, text: str) -> str | timedelta:
    """A ``--since`` / ``--until`` value: a duration (``6h``: that long ago), else a bound as
    `streamlab.ids.bound` reads it (a stream id, an ISO time with its zone, milliseconds).

    Bare digits are a stream id's time part (milliseconds), as in `select_dlq`: a pasted
    ``1795839300822`` must not be read as that many seconds ago.
    """
    value = text.strip()
    parsed: str | timedelta = value
    if not value.isdigit():
        with contextlib.suppress(ArgumentError):
            parsed = parse_duration(value)
    try:
        bound(parsed, name, upper=False)
    except ArgumentError as exc:
        if isinstance(parsed, timedelta) or value.replace("-", "", 1).isdigit():
            raise  # an id or milliseconds out of range: a duration is no way out
        raise ArgumentError(f"{exc} (or a duration like 1h)") from None
    return parsed


def min_id(name: str, text: str) -> str:
    """``--minid``: a stream id, or milliseconds (an id's time part) as XTRIM takes them."""
    value = text.strip()
    return id_text(bound(value, name, upper=False)) if value.isdigit() else entry_id(name, value)


_duration = _checked(duration)
_entry_id = _checked(entry_id)
_time_bound = _checked(time_bound)
_min_id = _checked(min_id)


class _Parser(argparse.ArgumentParser):
    """An `ArgumentParser` whose usage errors are one line (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        line = redact(f"{self.prog}: error: {message} (see {self.prog} --help)")
        self.exit(EXIT_USAGE, line + "\n")


def _replay_arguments(p: argparse.ArgumentParser) -> None:
    """The replay command's selection and run options."""
    from streamlab._cli_commands import add_filter_arguments

    p.add_argument("--dlq", help=DLQ_HELP)
    add_filter_arguments(p)
    p.add_argument("--limit", type=_positive_int)
    p.add_argument("--target", help="stream to inject into (default: each source stream)")
    p.add_argument("--keep-in-dlq", action="store_true")
    groups = p.add_mutually_exclusive_group()
    groups.add_argument("--for-group", help="only this group handles the replayed events")
    groups.add_argument("--all-groups", action="store_true", help="every group sees them")
    p.add_argument("--rate", type=_rate, help="events per second (at least 0.001)")
    p.add_argument("--batch-size", type=_positive_int, default=500)
    p.add_argument("--dry-run", action="store_true", help="report only, write nothing")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("streamlab")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``streamlab`` command."""
    from streamlab import _cli_commands, _cli_demo

    parser = _Parser(prog="streamlab", description=__doc__)
    parser.add_argument("--version", action="version", version=f"streamlab {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
        p.add_argument("--url", default=None, help="redis:// or rediss:// URL (default: REDIS_URL)")
        p.add_argument(
            "--tls-ca", default=None, metavar="FILE", help="CA certificate for a rediss:// URL"
        )
        p.add_argument(
            "--timeout",
            type=_seconds,
            default=DEFAULT_TIMEOUT,
            metavar="SECONDS",
            help=f"connect and reply timeout (default {DEFAULT_TIMEOUT:g})",
        )
        p.add_argument("--json", action="store_true", help="print JSON")
        if name != "demo":
            p.add_argument(
                "--cluster",
                action="store_true",
                help="the URL is a Redis Cluster node (found by itself from INFO otherwise)",
            )
        return p

    demo = command("demo", "the incident story: fail, dead-letter, fix, replay (embedded server)")
    # At least 3: the story's audit group reads a third of them.
    demo.add_argument("--events", type=_whole_number(3), default=3000)
    demo.add_argument("--seed", type=_integer, default=7)
    demo.add_argument("--stream", help="with --url: the stream to write (default webhook_events)")
    demo.add_argument("--keep", action="store_true", help="keep the embedded server until Ctrl-C")
    demo.set_defaults(func=_cli_demo.cmd_demo)
    info = command("info", "stream length, first/last ids and groups with lag")
    info.add_argument("stream")
    info.set_defaults(func=cmd_info)
    replay = command("replay", "re-inject DLQ events (shows a dry run and asks first)")
    replay.add_argument("stream", help="the source stream (its DLQ is <stream>_dlq)")
    _replay_arguments(replay)
    replay.set_defaults(func=cmd_replay)
    outcome = command("outcome", "what became of the events of a replay run")
    outcome.add_argument("stream")
    outcome.add_argument("replay_id")
    outcome.add_argument("--dlq", help=DLQ_HELP)
    outcome.set_defaults(func=cmd_outcome)
    _cli_commands.register(command, sub)
    return parser


def describe_error(exc: BaseException) -> tuple[str, int]:
    """The one line and exit code the command reports for ``exc``: the only such mapping."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", EXIT_INTERRUPTED
    if isinstance(exc, BrokenPipeError):
        return "output closed before everything was printed (broken pipe)", EXIT_ERROR
    if isinstance(exc, UsageError | ConfigError | ArgumentError):
        return str(exc), EXIT_USAGE
    if isinstance(exc, StreamlabError):
        return str(exc), EXIT_ERROR
    if isinstance(exc, redis.RedisError):
        denied = permission_error(exc)
        if denied is not None:
            return str(denied), EXIT_ERROR
    text = (reply_text(exc).splitlines() or [""])[0].strip()
    if isinstance(exc, redis.AuthenticationError | redis.AuthenticationWrongNumberOfArgsError):
        return f"authentication failed: {text} (check the URL's user and password)", EXIT_ERROR
    if isinstance(exc, redis.TimeoutError):
        return f"the server did not answer in time: {text} (see --timeout)", EXIT_ERROR
    if isinstance(exc, redis.ConnectionError):
        return f"cannot reach the server: {text}", EXIT_ERROR
    if isinstance(exc, redis.ResponseError):
        return f"the server refused the command: {text}", EXIT_ERROR
    if isinstance(exc, redis.RedisError):
        return f"{type(exc).__name__}: {text}", EXIT_ERROR
    if isinstance(exc, OSError):
        if exc.filename is None:  # the text says it all (pyarrow's repeats its strerror)
            return text or type(exc).__name__, EXIT_ERROR
        return f"{exc.strerror or type(exc).__name__}: {exc.filename}", EXIT_ERROR
    if isinstance(exc, EOFError):
        return "no answer to confirm on (stdin closed): pass --yes", EXIT_USAGE
    return f"unexpected {type(exc).__name__}: {text}", EXIT_ERROR


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``streamlab`` console script."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
    except (Exception, KeyboardInterrupt) as exc:
        if isinstance(exc, BrokenPipeError):
            _quiet_stdout()
        message, code = describe_error(exc)
        line = " ".join(redact(message, _url(args)).split())
        print(f"streamlab: error: {line}", file=sys.stderr)
    return code


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: the command modules raise
    # streamlab.cli's UsageError, which must be the class describe_error checks.
    from streamlab.cli import main as _main

    sys.exit(_main())
