"""The operator commands of ``streamlab`` (issue 11): groups, consumers, read, show, dlq
summaries, export, claim, trim, server, completion. `streamlab.cli` registers them.

Tables go through rich: colour on a terminal, plain text when piped. ``--json`` prints one
JSON document, named the same way everywhere: a list under its own name, ``count`` its
length, ``total`` how many there are before ``--limit`` (``matching`` when a filter applies).
Errors raise; `streamlab.cli.describe_error` turns them into one line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from streamlab.filters import COLUMNS

if TYPE_CHECKING:
    from streamlab.filters import DLQFilter

__all__ = ["add_filter_arguments", "dlq_filter", "print_frame", "register"]


def _console() -> Any:
    from rich.console import Console

    # Colour only on a terminal; piped output is plain and never wrapped to 80 columns.
    tty = sys.stdout.isatty()
    return Console(highlight=False, no_color=not tty, width=None if tty else 200)


def _cell(value: Any) -> str:
    if value is None or (not isinstance(value, (list, dict)) and pd.isna(value)):
        return ""
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, pd.Timedelta):
        return f"{value.total_seconds():.1f}s"
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _jsonable(value: Any) -> Any:
    if value is None or (not isinstance(value, (list, dict)) and pd.isna(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, pd.Timedelta):
        return value.total_seconds()
    if hasattr(value, "item"):
        return value.item()
    return value


def records(df: pd.DataFrame, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The rows of ``df`` (only ``columns`` when given) as JSON-ready dicts."""
    cols = [c for c in (columns or df.columns) if c in df.columns]
    return [{c: _jsonable(row[c]) for c in cols} for _, row in df[cols].iterrows()]


def print_frame(df: pd.DataFrame, columns: Sequence[str], title: str | None = None) -> None:
    """``df``'s ``columns`` as a table."""
    from rich.table import Table

    if title:
        say(title)  # above the table, not as its title: rich wraps a title to the table's width
    table = Table(box=None, header_style="bold")
    cols = [c for c in columns if c in df.columns]
    for c in cols:
        # An id is pasted into the next command (show, --id): never broken across lines.
        table.add_column(c, overflow="fold", no_wrap=c == "id")
    for _, row in df[cols].iterrows():
        table.add_row(*(_cell(row[c]) for c in cols))
    _emit(table)


def _emit(renderable: Any) -> None:
    # Rendered here and written by us: rich turns a broken pipe into a silent SystemExit,
    # and the command's one-line error contract needs the BrokenPipeError itself.
    console = _console()
    with console.capture() as captured:
        console.print(renderable, markup=False)
    for line in captured.get().splitlines():
        sys.stdout.write(line.rstrip() + "\n")


def show_frame(
    args: argparse.Namespace,
    df: pd.DataFrame,
    columns: Sequence[str],
    *,
    doc: dict[str, Any],
    rows: str,
    empty: str,
    title: str,
    json_columns: Sequence[str] | None = None,
) -> int:
    """A listing command's output: with ``--json``, ``doc`` and the rows under ``rows``;
    else ``empty`` when there are none, or the table below ``title``."""
    if args.json:
        dump({**doc, rows: records(df, json_columns or columns)})
    elif df.empty:
        say(empty)
    else:
        print_frame(df, columns, title=title)
    return 0


def counted(n: int, noun: str) -> str:
    """``"1 group"``, ``"3 groups"``."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def say(text: str) -> None:
    _emit(text)


def dump(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


BOUND_HELP = "6h (that long ago), an ISO time with its zone, a stream id or its milliseconds"


def add_time_bounds(p: argparse.ArgumentParser) -> None:
    """``--since`` / ``--until``, read by `streamlab.cli.time_bound`."""
    from streamlab.cli import _time_bound

    p.add_argument("--since", type=_time_bound, metavar="WHEN", help=BOUND_HELP)
    p.add_argument("--until", type=_time_bound, metavar="WHEN", help=BOUND_HELP)


def add_filter_arguments(p: argparse.ArgumentParser) -> None:
    """The filter keywords (`streamlab.filters`) as kebab-case flags, repeatable, and the
    time bounds; `dlq_filter` reads them back."""
    from streamlab.cli import _entry_id

    for name in COLUMNS:
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, action="append",
                       help="repeatable; values OR")  # fmt: skip
    p.add_argument("--id", action="append", type=_entry_id, help="a DLQ entry id; repeatable")
    p.add_argument("--error-contains")
    add_time_bounds(p)


def dlq_filter(args: argparse.Namespace) -> DLQFilter:
    """The `DLQFilter` of the filter flags (`add_filter_arguments`): every command that
    selects dead letters builds it here, through `DLQFilter.of`'s checks."""
    from streamlab.filters import DLQFilter

    columns = {name: getattr(args, name) for name in COLUMNS}
    return DLQFilter.of(**columns, error_contains=args.error_contains, ids=args.id)


def _client(args: argparse.Namespace) -> Any:
    from streamlab.cli import _client as make

    return make(args)


def cmd_groups(args: argparse.Namespace) -> int:
    from streamlab.errors import StreamNotFoundError
    from streamlab.frames import groups_to_dataframe

    client = _client(args)
    if not client.redis.exists(args.stream):
        raise StreamNotFoundError(f"no stream {args.stream!r}")
    df = groups_to_dataframe(client, args.stream)
    cols = ["group", "consumers", "pending", "lag", "last_delivered_id", "last_delivered"]
    return show_frame(args, df, cols, doc={"stream": args.stream}, rows="groups",
                      empty=f"{args.stream}: no consumer groups",
                      title=f"{args.stream}: {counted(len(df), 'group')}")  # fmt: skip


def cmd_consumers(args: argparse.Namespace) -> int:
    from streamlab.frames import consumers_to_dataframe

    df = consumers_to_dataframe(_client(args), args.stream, args.group)
    cols = ["consumer", "pending", "idle", "inactive"]
    where = f"{args.stream} {args.group}"
    return show_frame(args, df, cols, doc={"stream": args.stream, "group": args.group},
                      rows="consumers", empty=f"{where}: no consumers",
                      title=f"{where}: {counted(len(df), 'consumer')}")  # fmt: skip


def cmd_pending(args: argparse.Namespace) -> int:
    """Read only the ``--limit`` rows shown; the total comes from XPENDING's summary form.

    The summary cannot count entries idle at least ``--min-idle``: the total is then unknown
    (JSON ``null``) rather than a count of something else."""
    from streamlab.client import translate_errors
    from streamlab.frames import pending_to_dataframe
    from streamlab.records import PendingSummary

    client = _client(args)
    df = pending_to_dataframe(client, args.stream, args.group, consumer=args.consumer,
                              min_idle=args.min_idle, limit=args.limit)  # fmt: skip
    total: int | None = None
    if args.min_idle is None:
        with translate_errors(args.stream, args.group):
            summary = PendingSummary.from_reply(client.redis.xpending(args.stream, args.group))
        total = summary.count if args.consumer is None else summary.held_by(args.consumer)
    cols = ["id", "consumer", "state", "idle", "deliveries", "event_type", "tenant_id"]
    of = "" if total is None else f" of {total}"
    return show_frame(args, df, cols, rows="pending",
                      doc={"stream": args.stream, "group": args.group, "count": len(df),
                           "total": total},
                      empty=f"{args.stream} {args.group}: nothing pending",
                      title=f"{args.stream} {args.group}: showing {len(df)}{of}")  # fmt: skip


READ_COLUMNS = ["id", "ts", "event_type", "tenant_id", "repository", "retry_count"]


def cmd_read(args: argparse.Namespace) -> int:
    from streamlab.frames import stream_to_dataframe

    client = _client(args)
    df = stream_to_dataframe(
        client, args.stream, since=args.since, until=args.until, limit=args.limit
    )
    return show_frame(args, df, READ_COLUMNS, doc={"stream": args.stream, "count": len(df)},
                      rows="entries", empty=f"{args.stream}: no entries",
                      title=f"{args.stream}: {len(df):,} entries")  # fmt: skip


def cmd_show(args: argparse.Namespace) -> int:
    from streamlab.errors import NotFoundError
    from streamlab.frames import dlq_to_dataframe, stream_to_dataframe

    client = _client(args)
    where = args.stream
    df = stream_to_dataframe(client, args.stream, since=args.id, until=args.id, limit=1)
    if df.empty:
        df = dlq_to_dataframe(client, args.stream, dlq=args.dlq, since=args.id, until=args.id,
                              limit=1)  # fmt: skip
        where = args.dlq or client.dlq_stream(args.stream)
    if df.empty:
        raise NotFoundError(f"no entry {args.id} in {args.stream!r} or its DLQ")
    row = records(df)[0]
    row = {k: v for k, v in row.items() if v is not None and not k.startswith("_")}
    if args.json:
        dump({"stream": where, **row})
        return 0
    # The JSON documents get a section each, pretty-printed, after the one-line fields.
    documents = {name: row.pop(name) for name in ("auth_context", "payload") if name in row}
    traceback = row.pop("traceback", None)
    say(f"{where} {row.pop('id')}")
    width = max(len(k) for k in row) if row else 0
    for key, value in row.items():
        say(f"  {key:<{width}}  {value}")
    for name, text in documents.items():
        say(f"{name}:")
        try:
            say(json.dumps(json.loads(text), indent=2))
        except ValueError:
            say(str(text))
    if traceback:
        say("traceback:")
        say(str(traceback))
    return 0


DLQ_COLUMNS = ["id", "failed_at", "tenant_id", "event_type", "error_signature", "attempts"]


def cmd_dlq(args: argparse.Namespace) -> int:
    from streamlab.frames import dlq_summary, dlq_to_dataframe

    flt = dlq_filter(args)
    client = _client(args)
    df = dlq_to_dataframe(client, args.stream, dlq=args.dlq, since=args.since, until=args.until)
    total = len(df)
    selected = flt.apply(df)
    if args.summary:
        by = args.by or "error_signature"
        if by not in selected.columns:
            from streamlab.cli import UsageError

            raise UsageError(f"--by {by}: no such column (choose from {', '.join(COLUMNS)})")
        summary = dlq_summary(selected, by=by)
        cols = [by, "count", "first_failure", "last_failure"]
        if args.json:
            dump({"stream": args.stream, "count": len(selected), "by": by,
                  "groups": records(summary, cols)})  # fmt: skip
        else:
            print_frame(summary, cols, title=f"{len(selected)} dead letters by {by}")
        return 0
    shown = selected.head(args.limit)
    in_dlq = f" ({total} in the DLQ)" if total != len(selected) else ""
    return show_frame(args, shown, DLQ_COLUMNS, json_columns=[*DLQ_COLUMNS, "error"],
                      doc={"stream": args.stream, "count": len(shown),
                           "matching": len(selected), "total": total},
                      rows="entries",
                      empty=f"{args.stream}: no dead letters" + (" match" if total else ""),
                      title=f"showing {len(shown)} of {len(selected)} dead letters{in_dlq}",
                      )  # fmt: skip


def cmd_export(args: argparse.Namespace) -> int:
    from streamlab.cli import RunFailed, UsageError
    from streamlab.frames import dlq_to_dataframe, export_parquet, stream_to_dataframe

    target = str(args.to)
    kinds = (".parquet", ".csv", ".jsonl")
    if not target.endswith(kinds):
        raise UsageError(f"--to {target}: the file must end with {', '.join(kinds)}")
    flt = dlq_filter(args)
    if flt and args.dlq is None:
        raise UsageError("filters apply to the DLQ: add --dlq")
    folder = _missing_folder(target)
    if folder:
        raise RunFailed(f"cannot write {target}: no folder {folder}")
    client = _client(args)
    # --dlq NAME, or the stream's DLQ as every command names it (--dlq alone).
    dlq = None if args.dlq is None else client.dlq_stream(args.stream)
    since, until, limit = args.since, args.until, args.limit
    tty = sys.stderr.isatty()
    if target.endswith(".parquet"):
        # Streamed in chunks, and read_parquet gives back the stream's (or the DLQ's) frame;
        # filtered, the writer keeps the matching dead letters of the one read (--limit caps
        # those), not a selection read first and then read again.
        count = export_parquet(client, args.stream, target, dlq=dlq or False, since=since,
                               until=until, limit=limit, filters=flt or None,
                               progress=tty)  # fmt: skip
    else:
        if dlq is None:
            df = stream_to_dataframe(client, args.stream, since=since, until=until, limit=limit,
                                     progress=tty)  # fmt: skip
        else:
            # Filtered, --limit caps the dead letters that match, not those read.
            df = dlq_to_dataframe(client, args.stream, dlq=dlq, since=since, until=until,
                                  limit=None if flt else limit, progress=tty)  # fmt: skip
            if flt:
                df = flt.apply(df).iloc[:limit]
        df = df.drop(columns=[c for c in ("_raw",) if c in df.columns])
        count = len(df)
        if target.endswith(".csv"):
            df.to_csv(target, index=False)
        else:
            df.to_json(target, orient="records", lines=True, date_format="iso")
    if args.json:
        dump({"stream": args.stream, "dlq": dlq, "count": count, "path": target})
    else:
        say(f"exported {count:,} entries to {target}")
    return 0


def cmd_claim(args: argparse.Namespace) -> int:
    from streamlab.cli import UsageError
    from streamlab.client import translate_errors
    from streamlab.records import AutoClaimPage, claimed_ids

    if bool(args.ids) == args.all:
        raise UsageError("give entry ids or --all (not both)")
    client = _client(args)
    idle_ms = int(args.min_idle.total_seconds() * 1000)
    claimed: list[str] = []
    with translate_errors(args.stream, args.group):
        if args.all:
            start = "0-0"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                page = AutoClaimPage.from_reply(client.redis.xautoclaim(
                    args.stream, args.group, args.consumer, idle_ms, start, count=500
                ))  # fmt: skip
                claimed += page.ids
                start = page.next_id
                if page.done:
                    break
        else:
            claimed = claimed_ids(client.redis.xclaim(
                args.stream, args.group, args.consumer, idle_ms, args.ids, justid=True
            ))  # fmt: skip
    if args.json:
        dump({"stream": args.stream, "group": args.group, "consumer": args.consumer,
              "count": len(claimed), "ids": claimed})  # fmt: skip
    else:
        say(f"claimed {len(claimed)} entries for {args.consumer}")
    return 0


def cmd_trim(args: argparse.Namespace) -> int:
    from streamlab.cli import RunFailed, UsageError
    from streamlab.client import translate_errors
    from streamlab.ids import parse_id
    from streamlab.records import pending_entries

    if (args.maxlen is None) == (args.minid is None):
        raise UsageError("give --maxlen N or --minid ID")
    client = _client(args)
    r = client.redis
    with translate_errors(args.stream):
        if args.maxlen is not None:
            length = r.xlen(args.stream)
            cut = length - args.maxlen
            first_kept = None
            if cut > 0:
                kept = r.xrange(args.stream, "-", "+", count=cut + 1)
                first_kept = kept[-1][0].decode() if len(kept) > cut else None
        else:
            first_kept = args.minid
        if not args.force and first_kept is not None:
            cut = parse_id(first_kept)
            for group in client.get_stream_info(args.stream).groups:
                held = pending_entries(r.xpending_range(args.stream, group.name, "-", "+", 1))
                if held and parse_id(held[0].id) < cut:
                    raise RunFailed(f"group {group.name!r} still holds entries pending "
                                    "before the cut; pass --force to trim anyway")  # fmt: skip
                if parse_id(group.last_delivered_id) < cut and (group.lag or 0) > 0:
                    raise RunFailed(f"group {group.name!r} has not been given entries "
                                    "before the cut; pass --force to trim anyway")  # fmt: skip
        if args.maxlen is not None:
            removed = r.xtrim(args.stream, maxlen=args.maxlen, approximate=False)
        else:
            removed = r.xtrim(args.stream, minid=args.minid, approximate=False)
    if args.json:
        dump({"stream": args.stream, "removed": removed})
    else:
        say(f"removed {removed} entries from {args.stream}")
    return 0


_STOP_POLL = 0.2  # seconds: how late a stop asked by a signal may be seen


@contextlib.contextmanager
def until_stopped() -> Iterator[Callable[[], None]]:
    """From here on Ctrl-C (SIGINT) and SIGTERM ask to stop; the function given blocks until
    one did, and a foreground command then stops cleanly, its ``with`` blocks closing (an
    embedded server is stopped, never left orphaned). Enter it before announcing that the
    command is ready: a signal sent right after the announcement is then never lost, nor
    does it kill the process before it can clean up."""
    import signal
    import threading

    from streamlab._signals import signals_set

    stop = threading.Event()

    def wait() -> None:
        # Short waits, not one long one: the kernel may hand the signal to another thread
        # (the HTTP server's), and the main thread runs Python's handler only once its wait
        # returns; a long wait would leave the stop unseen for that long.
        while not stop.wait(_STOP_POLL):
            pass

    with signals_set(stop, signal.SIGINT, signal.SIGTERM):
        yield wait


def note(text: str) -> None:
    """A status line on stderr, so that stdout keeps only what is meant to be pasted."""
    print(text, file=sys.stderr, flush=True)


def _port_free(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cmd_server(args: argparse.Namespace) -> int:
    from streamlab.cli import RunFailed
    from streamlab.embedded import EmbeddedServer

    if args.port and not _port_free(args.port):
        raise RunFailed(f"port {args.port} is in use: pick another --port (or none for a free one)")
    options = {"port": args.port} if args.port else {}
    with until_stopped() as wait, EmbeddedServer(**options) as server:
        print(f"export REDIS_URL={server.url}", flush=True)
        note(f"embedded {os.path.basename(server.binary)} (pid {server.pid}) running; "
             "Ctrl-C stops it")  # fmt: skip
        wait()
    note("embedded server stopped")
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    import redis
    from prometheus_client import start_http_server
    from prometheus_client.core import REGISTRY, GaugeMetricFamily

    from streamlab._redact import redact, redact_url
    from streamlab.cli import RunFailed, _url, describe_error
    from streamlab.frames import groups_to_dataframe
    from streamlab.metrics import lag_family

    client = _client(args)
    client.redis.ping()  # a bad URL, password or host fails here, not at the first scrape
    streams = list(dict.fromkeys(args.stream))
    url = _url(args) or ""

    def families() -> list[GaugeMetricFamily]:
        # The workers' names (`streamlab.metrics`): the lag is the same series, the rest
        # follow its prefix.
        return [
            GaugeMetricFamily("queue_up", "1 when every stream was read at this scrape"),
            lag_family(),
            GaugeMetricFamily("queue_consumer_pending", "Entries delivered, not acked",
                              labels=["stream", "group"]),
            GaugeMetricFamily("queue_dlq_length", "Dead letters", labels=["stream"]),
        ]  # fmt: skip

    class Collector:
        def describe(self) -> Any:
            # Without describe() the registry would call collect(), and so Redis, at
            # registration.
            return families()

        def collect(self) -> Any:
            up, lag, pend, dlq = families()
            ok = True
            for stream in streams:
                try:
                    groups = records(groups_to_dataframe(client, stream))
                    length = int(client.redis.xlen(client.dlq_stream(stream)))
                except Exception as exc:  # one line, and the scrape still answers
                    ok = False
                    message, _ = describe_error(exc)
                    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
                        note(f"streamlab metrics: {redact(message, url)}")
                        break  # the other streams would say the same
                    note(f"streamlab metrics: {stream}: {redact(message, url)}")
                    continue
                for row in groups:
                    if row["lag"] is not None:  # Redis cannot always tell: no sample then
                        lag.add_metric([stream, row["group"]], row["lag"])
                    pend.add_metric([stream, row["group"]], row["pending"] or 0)
                dlq.add_metric([stream], length)
            up.add_metric([], 1 if ok else 0)
            return [up, lag, pend, dlq]

    REGISTRY.register(Collector())
    with until_stopped() as wait:
        try:
            httpd, _ = start_http_server(args.port, addr=args.host)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise RunFailed(f"cannot serve on {args.host} port {args.port}: {reason}") from exc
        port = httpd.server_port  # the one picked for --port 0
        say(f"serving Prometheus metrics of {', '.join(streams)} (from {redact_url(url)})")
        if args.host in ("0.0.0.0", "::"):
            say(f"  http://127.0.0.1:{port}/metrics (port {port} on every interface)")
        else:
            shown = f"[{args.host}]" if ":" in args.host else args.host
            say(f"  http://{shown}:{port}/metrics")
        say("  queue_consumer_lag, queue_consumer_pending, queue_dlq_length, queue_up")
        sys.stdout.flush()
        note("Ctrl-C stops it")
        wait()
    note("metrics endpoint stopped")
    return 0


# One completion function; zsh runs it through its bash compatibility layer.
_BASH_COMPLETION = """_streamlab() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}}
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W "{commands}" -- "$cur"))
    else
        local flags
        flags=$(streamlab "${{COMP_WORDS[1]}}" --help 2>/dev/null | grep -o -- '--[a-z-]*')
        COMPREPLY=($(compgen -W "$flags" -- "$cur"))
    fi
}}
complete -o default -F _streamlab streamlab
"""
COMPLETION = {
    "bash": _BASH_COMPLETION,
    "zsh": "autoload -U bashcompinit && bashcompinit\n" + _BASH_COMPLETION,
}


def cmd_completion(args: argparse.Namespace) -> int:
    from streamlab.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    print(COMPLETION[args.shell].format(commands=" ".join(sorted(commands))), end="")
    return 0


def cmd_replays(args: argparse.Namespace) -> int:
    from streamlab.ids import entry_time
    from streamlab.keys import ledger_key
    from streamlab.replay import replay_outcome

    client = _client(args)
    dlq = args.dlq or client.dlq_stream(args.stream)
    prefix = ledger_key(dlq, "")
    runs = []
    for key in client.redis.scan_iter(match=ledger_key(dlq, "*"), count=500):
        name = key.decode() if isinstance(key, bytes) else key
        replay_id = name[len(prefix) :]
        first = next(iter(client.redis.hscan_iter(name, count=1)), None)
        if first is None:
            continue  # expired between SCAN and HSCAN
        when = entry_time(first[1].split(b"\n", 1)[0])
        outcome = replay_outcome(client, args.stream, replay_id, dlq=dlq)
        states = outcome["state"].value_counts()
        runs.append({"replay_id": replay_id, "when": when,
                     "events": int(client.redis.hlen(name)),
                     **{str(k): int(v) for k, v in states.items() if v}})  # fmt: skip
    runs.sort(key=lambda r: r["when"] or pd.Timestamp(0, tz="UTC"), reverse=True)
    df = pd.DataFrame(runs)
    return show_frame(args, df, list(df.columns), doc={"stream": args.stream, "count": len(runs)},
                      rows="replays",
                      empty=f"{args.stream}: no replay runs (or their ledgers expired)",
                      title=f"{args.stream}: {counted(len(df), 'replay run')}")  # fmt: skip


ARCHIVE_KINDS = (".parquet", ".jsonl")


def _missing_folder(path: str) -> str | None:
    """The folder ``path`` would be written into, when there is no such folder."""
    folder = os.path.dirname(os.path.abspath(path))
    return None if os.path.isdir(folder) else folder


def _fsync_folder(path: str) -> None:
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return  # not every platform opens folders; the file itself is already synced
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _write_archive(client: Any, stream: str, dlq: str, ids: list[str], path: str) -> list[str]:
    """Write the dead letters ``ids`` to ``path`` as the DLQ frame (`dlq_to_dataframe`'s
    columns), and return the ids the file holds, read back from it.

    Parquet goes through `export_parquet` (``pd.read_parquet`` and `read_parquet` read it
    back), JSON lines one row per entry. The file is written under a temporary name, fsynced,
    then renamed into place and its folder fsynced: when this returns the archive is complete
    on disk, and when it raises there is no archive file, only the error.
    """
    from streamlab.frames import dlq_to_dataframe, export_parquet

    tmp = f"{path}.partial"
    try:
        if path.endswith(".parquet"):
            export_parquet(client, stream, tmp, dlq=dlq, ids=ids)
            import pyarrow.parquet as pq

            written = [str(i) for i in pq.read_table(tmp, columns=["id"]).column("id").to_pylist()]
        else:
            first, last = ids[0], ids[-1]  # oldest first, as select_dlq gives them
            df = dlq_to_dataframe(client, stream, dlq=dlq, since=first, until=last)
            df = df[df["id"].isin(ids)].drop(columns=["_raw"], errors="ignore")
            df.to_json(tmp, orient="records", lines=True, date_format="iso")
            with open(tmp, encoding="utf-8") as fh:
                written = [str(json.loads(line)["id"]) for line in fh if line.strip()]
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            from streamlab.cli import RunFailed

            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise RunFailed(f"cannot write the archive {path}: {reason}; "
                            "nothing was discarded") from exc  # fmt: skip
        raise
    _fsync_folder(path)
    return written


def _check_archive(path: str) -> None:
    """Refuse an archive that cannot be written before anything is selected or asked."""
    from streamlab.cli import RunFailed, UsageError

    if not path.endswith(ARCHIVE_KINDS):
        raise UsageError(f"--archive {path}: the file must end with .parquet or .jsonl")
    if os.path.lexists(path):
        raise UsageError(f"--archive {path}: the file exists; refusing to overwrite an archive")
    folder = _missing_folder(path)
    if folder:
        raise RunFailed(f"cannot write the archive {path}: no folder {folder}; "
                        "nothing was discarded")  # fmt: skip


def cmd_discard(args: argparse.Namespace) -> int:
    """Archive (when asked) then XDEL the selected dead letters. The archive is complete on
    disk (written, fsynced, renamed into place) before anything is deleted, and only the ids
    read back from it are deleted: a failure part-way leaves every entry in one place.

    The archive is the selected entries read again, by the exporters, not written from the
    selection: the selection holds redis-py's field dicts, in which a field name repeated in
    one entry (XADD allows it) keeps only its last value, and the exporters read the raw reply,
    which keeps every field. An entry gone since it was selected (replayed while the prompt
    waited, say) is then in neither the archive nor the deletion."""
    from streamlab.cli import _confirm
    from streamlab.client import translate_errors
    from streamlab.replay import select_dlq

    if args.archive:
        _check_archive(args.archive)
    client = _client(args)
    selection = select_dlq(client, args.stream, dlq_filter(args), dlq=args.dlq,
                           since=args.since, until=args.until)  # fmt: skip
    ids = selection.ids
    dlq = selection.dlq
    if args.dry_run or not ids:
        if args.json:
            dump({"stream": args.stream, "dlq": dlq, "dry_run": True, "count": len(ids),
                  "ids": ids})  # fmt: skip
        else:
            say(str(selection))
            say(f"would discard {len(ids)} dead letters" if ids else "nothing to discard")
        return 0
    if not args.yes:
        say(str(selection))
        if not _confirm(f"discard {len(ids):,} dead letters?"):
            say("nothing discarded")
            return 1
    if args.archive:
        archived = set(_write_archive(client, args.stream, dlq, ids, args.archive))
        # An entry gone from the DLQ since it was selected is in neither place: never delete
        # what the archive does not hold.
        ids = [i for i in ids if i in archived]
    removed = 0
    with translate_errors(dlq):
        for start in range(0, len(ids), 500):
            removed += int(client.redis.xdel(dlq, *ids[start : start + 500]))
    if args.json:
        dump({"stream": args.stream, "dlq": dlq, "dry_run": False, "count": removed,
              "archive": args.archive, "ids": ids})  # fmt: skip
    else:
        where = f" (archived to {args.archive})" if args.archive else ""
        say(f"discarded {removed} dead letters from {dlq}{where}")
    return 0


def register(command: Callable[[str, str], argparse.ArgumentParser], sub: Any) -> None:  # noqa: PLR0915
    """Add the operator commands; ``command`` adds one with the common connection flags."""
    from streamlab.cli import (
        DLQ_HELP,
        _duration,
        _entry_id,
        _min_id,
        _non_negative_int,
        _port,
        _positive_int,
    )

    p = command("groups", "consumer groups of a stream: lag, pending, consumers")
    p.add_argument("stream")
    p.set_defaults(func=cmd_groups)
    p = command("consumers", "consumers of a group: idle time and pending each")
    p.add_argument("stream")
    p.add_argument("group")
    p.set_defaults(func=cmd_consumers)
    p = command("pending", "pending entries of a group, classified")
    p.add_argument("stream")
    p.add_argument("group")
    p.add_argument("--consumer")
    p.add_argument("--min-idle", type=_duration, metavar="DUR", help="e.g. 30s, 5m")
    p.add_argument("--limit", type=_positive_int, default=100)
    p.set_defaults(func=cmd_pending)
    p = command("read", "entries of a stream")
    p.add_argument("stream")
    add_time_bounds(p)
    p.add_argument("--limit", type=_positive_int, default=50)
    p.set_defaults(func=cmd_read)
    p = command("show", "one entry of a stream or its DLQ, payload and traceback")
    p.add_argument("stream")
    p.add_argument("id", type=_entry_id, help="the entry's stream id (or its DLQ id)")
    p.add_argument("--dlq", help=DLQ_HELP)
    p.set_defaults(func=cmd_show)
    p = command("dlq", "dead letters (filtered), or --summary grouped by signature")
    p.add_argument("stream", help="the source stream (its DLQ is <stream>_dlq)")
    p.add_argument("--dlq", help=DLQ_HELP)
    add_filter_arguments(p)
    p.add_argument("--limit", type=_positive_int, default=50)
    p.add_argument("--summary", action="store_true", help="group by error signature")
    p.add_argument("--by", choices=COLUMNS, help="with --summary: group by this column")
    p.set_defaults(func=cmd_dlq)
    p = command("export", "write a stream or its DLQ to .parquet, .csv or .jsonl")
    p.add_argument("stream")
    p.add_argument("--to", required=True, metavar="FILE")
    p.add_argument("--dlq", nargs="?", const="", metavar="NAME",
                   help="export the DLQ (<stream>_dlq, or the DLQ stream NAME)")  # fmt: skip
    add_filter_arguments(p)
    p.add_argument("--limit", type=_positive_int, help="at most this many entries")
    p.set_defaults(func=cmd_export)
    p = command("claim", "take over pending entries idle at least --min-idle")
    p.add_argument("stream")
    p.add_argument("group")
    p.add_argument("consumer")
    p.add_argument("ids", nargs="*", type=_entry_id)
    p.add_argument("--min-idle", required=True, type=_duration, metavar="DUR")
    p.add_argument("--all", action="store_true")
    p.set_defaults(func=cmd_claim)
    p = command("trim", "remove old entries every group has been given and acked")
    p.add_argument("stream")
    p.add_argument("--maxlen", type=_non_negative_int)
    p.add_argument("--minid", type=_min_id, metavar="ID")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_trim)
    p = command("replays", "past replay runs of a stream's DLQ, from their ledgers")
    p.add_argument("stream")
    p.add_argument("--dlq", help=DLQ_HELP)
    p.set_defaults(func=cmd_replays)
    p = command("discard", "remove dead letters given up on (archive first with --archive)")
    p.add_argument("stream")
    p.add_argument("--dlq", help=DLQ_HELP)
    add_filter_arguments(p)
    p.add_argument("--archive", metavar="FILE", help=".parquet or .jsonl")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_discard)
    p = command("metrics", "serve Prometheus /metrics for streams (lag, pending, DLQ)")
    p.add_argument("--stream", action="append", required=True)
    p.add_argument("--port", type=_port, default=9108, help="0: any free port")
    p.add_argument(
        "--host", default="0.0.0.0", help="address to listen on (default: every interface)"
    )
    p.set_defaults(func=cmd_metrics)
    p = sub.add_parser("server", help="an embedded server in the foreground, until Ctrl-C")
    p.add_argument("--port", type=_port, help="default (or 0): any free port")
    p.set_defaults(func=cmd_server, url=None)
    p = sub.add_parser("completion", help="print a bash or zsh completion script")
    p.add_argument("shell", choices=sorted(COMPLETION))
    p.set_defaults(func=cmd_completion, url=None)
