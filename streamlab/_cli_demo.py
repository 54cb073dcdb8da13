"""``streamlab demo``: the incident story, step by step, each step a short table.

Produce webhook events and run the buggy worker (`streamlab.incident.seed_incident`: a token
bug for one tenant and a one-minute downstream outage), look at the DLQ by signature, try the
fix on it, dry-run the replay, replay, let the fixed worker process everything, and check that
nothing was lost. Writes a PNG chart of failures over time to the working folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import timedelta
from typing import Any

from streamlab._cli_commands import dump, print_frame, records, say
from streamlab._redact import redact_url

__all__ = ["CHART", "DEMO_STREAM", "cmd_demo"]

DEMO_STREAM = "webhook_events"
CHART = "streamlab-demo-failures.png"


def _story(url: str, stream: str, events: int, seed: int, as_json: bool) -> dict[str, Any]:  # noqa: PLR0915
    import pandas as pd

    from streamlab.backoff import Backoff
    from streamlab.client import RedisStreamsClient, connect_any
    from streamlab.consumer import Consumer, ConsumerConfig
    from streamlab.frames import dlq_summary, dlq_to_dataframe, plot_failures
    from streamlab.incident import fixed_handler, seed_incident
    from streamlab.keys import is_cluster
    from streamlab.replay import replay_dlq, replay_outcome, select_dlq, try_handler

    def step(title: str, frame: pd.DataFrame, columns: list[str]) -> None:
        if not as_json:
            say("")
            print_frame(frame, columns, title=title)

    started = time.monotonic()
    client = RedisStreamsClient(connect_any(url))
    if is_cluster(client.redis) and stream == DEMO_STREAM:
        # On a cluster the stream's DLQ and bookkeeping keys must share its slot.
        stream = "{" + stream + "}"
    try:
        if client.redis.exists(stream, client.dlq_stream(stream)):
            from streamlab.cli import UsageError

            raise UsageError(f"stream {stream!r} (or its DLQ) already exists: pass --stream NAME")
        incident = seed_incident(client, stream, events=events, seed=seed)
        s = incident.stats
        step("1. produce and consume (the handler has a bug and the CI service goes down)",
             pd.DataFrame([{"produced": incident.produced, "acked": s.acked,
                            "retried": s.retried, "dead_lettered": s.dead_lettered}]),
             ["produced", "acked", "retried", "dead_lettered"])  # fmt: skip
        df = dlq_to_dataframe(client, stream)
        summary = dlq_summary(df, by="error_signature")
        step(f"2. the DLQ ({len(df)} dead letters) by error signature", summary,
             ["error_signature", "count"])  # fmt: skip
        tenants = dlq_summary(df, by=["error_type", "tenant_id"]).head(4)
        step("   ... and by error type and tenant (the bug is one tenant's)", tenants,
             ["error_type", "tenant_id", "count"])  # fmt: skip
        ax = plot_failures(df, by="error_type", time_column="timestamp",
                           title="streamlab demo: dead letters by event time")  # fmt: skip
        chart = os.path.abspath(CHART)
        ax.get_figure(root=True).savefig(chart, dpi=100)  # type: ignore[union-attr]
        selection = select_dlq(client, stream)
        trial = try_handler(fixed_handler, selection)
        tried = trial.groupby("outcome").size().rename("events").reset_index()
        step("3. try the fixed handler on the DLQ (writes nothing)", tried, ["outcome", "events"])
        plan = replay_dlq(client, stream, selection, dry_run=True)
        step("4. dry run of the replay", pd.DataFrame([{"selected": len(plan.selected),
             "would_replay": len(plan.replayed), "would_fail": len(plan.failed)}]),
             ["selected", "would_replay", "would_fail"])  # fmt: skip
        report = replay_dlq(client, stream, selection)
        config = ConsumerConfig(
            stream=stream, group=incident.group, consumer="worker-2", batch_size=100,
            max_retries=2, backoff=Backoff(initial=timedelta(milliseconds=20)),
            claim_min_idle=timedelta(minutes=10),
        )  # fmt: skip
        after = Consumer(client, config).run(fixed_handler, burst=True, handle_signals=False)
        # A run that replayed nothing (a demo too small to dead-letter any) has no ledger.
        outcome = replay_outcome(client, stream, report.replay_id) if report.replayed else None
        states = (pd.Series(dtype="int64") if outcome is None
                  else outcome["state"].value_counts()).rename_axis("state")  # fmt: skip
        step(f"5. replay {report.replay_id} and run the fixed worker",
             states.rename("events").reset_index(), ["state", "events"])  # fmt: skip
        dlq_left = client.redis.xlen(client.dlq_stream(stream))
        groups = {g.name: g.pending for g in client.get_stream_info(stream).groups}
        result = {
            "stream": stream,
            "dlq": client.dlq_stream(stream),
            "produced": incident.produced,
            "acked": s.acked,
            "retried": s.retried,
            "dead_lettered": s.dead_lettered,
            "signatures": {r["error_signature"]: r["count"] for r in records(summary)},
            "tried_ok": int((trial["outcome"] == "ok").sum()),
            "replay_id": report.replay_id,
            "replayed": len(report.replayed),
            "replay_failed": len(report.failed),
            "processed_after_replay": after.acked,
            "dlq_length": dlq_left,
            "pending": groups,
            "held_by_dead_worker": incident.held_by_dead_worker,
            "chart": chart,
            "seconds": round(time.monotonic() - started, 2),
        }
    finally:
        client.redis.close()
    if not as_json:
        step("6. nothing lost", pd.DataFrame([{
            "dead_lettered": s.dead_lettered, "replayed": len(report.replayed),
            "processed": after.acked, "dlq_now": dlq_left}]),
            ["dead_lettered", "replayed", "processed", "dlq_now"])  # fmt: skip
        say(f"   {incident.held_by_dead_worker} entries are still held by worker-dead "
            "(a worker that died): claim them, see below")  # fmt: skip
        say(f"\nchart of failures over time: {chart}")
        say(f"done in {result['seconds']:.1f} s")
    return result


def next_commands(stream: str, group: str = "webhook_workers") -> list[str]:
    return [
        f"streamlab groups {stream}",
        f"streamlab pending {stream} {group}",
        f"streamlab dlq {stream} --summary --by tenant_id",
        f"streamlab claim {stream} {group} worker-2 --min-idle 1s --all",
        f"streamlab export {stream} --to events.parquet",
    ]


def cmd_demo(args: argparse.Namespace) -> int:
    from streamlab.cli import _client
    from streamlab.embedded import EmbeddedServer

    stream = args.stream or DEMO_STREAM
    if args.url and args.keep:
        from streamlab.cli import UsageError

        raise UsageError("--keep is for the embedded server; a --url server keeps running anyway")
    if args.url:
        _client(args).redis.ping()  # a bad URL, password or host fails here, within --timeout
        url = args.url
        if args.tls_ca:
            from urllib.parse import quote

            url += f"{'&' if '?' in url else '?'}ssl_ca_certs={quote(args.tls_ca)}"
        if not args.json:
            say(f"streamlab demo: {args.events} webhook events into stream {stream!r} "
                f"on {redact_url(args.url)}")  # fmt: skip
        result = _story(url, stream, args.events, args.seed, args.json)
        where = f"export REDIS_URL={redact_url(args.url)}"
        return _finish(result, stream, where, args.json)
    with EmbeddedServer() as server:
        if not args.json:
            say(f"streamlab demo: {args.events} webhook events into stream {stream!r} "
                f"on an embedded server at {server.url}")  # fmt: skip
        result = _story(server.url, stream, args.events, args.seed, args.json)
        result["url"] = server.url
        where = f"export REDIS_URL={server.url}"
        if not args.keep:
            code = _finish(result, stream, where, args.json)
            if not args.json:
                say("(the embedded server stops now: run `streamlab demo --keep` to try them)")
            return code
        from streamlab._cli_commands import note, until_stopped

        # Ctrl-C or SIGTERM from the moment the URL is shown: the server is stopped on the way out.
        with until_stopped() as wait:
            header = "next, try (in another terminal: this one keeps the server)"
            code = _finish(result, stream, where, args.json, header=header)
            if args.json:
                note(f"the embedded server keeps running at {server.url}; Ctrl-C stops it")
            else:
                say("\nthe embedded server keeps running; Ctrl-C stops it")
            sys.stdout.flush()
            wait()
        note("embedded server stopped")
    return code


def _finish(
    result: dict[str, Any], stream: str, where: str, as_json: bool, *, header: str = ""
) -> int:
    result["next"] = next_commands(stream)
    if as_json:
        dump(result)
        return 0
    say(f"\n{header or 'next, try'}:")
    say(f"  {where}")
    for line in result["next"]:
        say(f"  {line}")
    return 0
