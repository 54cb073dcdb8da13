"""Replaying: `replay_dlq`, its `ReplayReport`, and the batches of script calls it sends."""

from __future__ import annotations

import html
import logging
import math
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Protocol

import redis

from streamlab import _args
from streamlab._moves import replay_tx
from streamlab._progress import progress_bar
from streamlab.client import (
    ClientLike,
    RedisStreamsClient,
    as_client,
    dlq_name,
    permission_error,
    send_packed,
)
from streamlab.errors import ArgumentError, NotFoundError
from streamlab.filters import KEYWORDS
from streamlab.keys import check_same_slot, is_cluster, ledger_key, replayed_key
from streamlab.records import MarkerStamp, valid_replay_id
from streamlab.replay._entries import _COUNT_FIELD, _Entry
from streamlab.replay.selection import ReplaySelection, check_selection, select_dlq
from streamlab.scripts import LUA_MAX_VALUES

if TYPE_CHECKING:
    import pandas as pd

_log = logging.getLogger("streamlab.replay")
_PAD = " style='padding:0 .8em;text-align:left'"

__all__ = [
    "DEFAULT_LEDGER_TTL",
    "FAILED_GROUP",
    "Cancel",
    "FailedGroup",
    "ReplayReport",
    "replay_dlq",
]

DEFAULT_LEDGER_TTL: Final = timedelta(days=30)


class FailedGroup:
    """The type of `FAILED_GROUP`: ``for_group=FAILED_GROUP`` (the default) stamps each event's
    ``replay_group`` with the group it failed in (its ``dlq_group``)."""

    def __repr__(self) -> str:
        return "FAILED_GROUP"


FAILED_GROUP: Final = FailedGroup()


class Cancel(Protocol):
    """What ``replay_dlq(cancel=...)`` takes: a `threading.Event`, or anything with its
    ``is_set`` and ``wait``."""

    def is_set(self) -> bool:
        """True once the replay should stop."""
        ...

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep up to ``timeout`` seconds, waking early when set; whether it is set."""
        ...


# -- report ------------------------------------------------------------------------------------


@dataclass(eq=False, repr=False)
class ReplayReport:
    """What a replay run did (or, with ``dry_run``, would do).

    ``selected`` lists the DLQ ids considered, oldest first; each ends in exactly one of
    ``replayed``, ``skipped`` (id -> reason: already replayed, gone from the DLQ, no target),
    ``failed`` (id -> error; the entry stays in the DLQ) or, after a cancel, ``remaining``.
    ``mapping`` gives DLQ id -> new stream id for every replayed id, and for ids this same run
    replayed before a rerun; a dry run cannot know new ids (the server assigns them on XADD)
    and maps each id it would replay to None. ``targets`` gives DLQ id -> target stream.
    """

    stream: str
    dlq: str
    replay_id: str
    dry_run: bool
    keep_in_dlq: bool = False
    selected: list[str] = field(default_factory=list)
    replayed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    remaining: list[str] = field(default_factory=list)
    mapping: dict[str, str | None] = field(default_factory=dict)
    targets: dict[str, str] = field(default_factory=dict)
    cancelled: bool = False
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    duration: timedelta = timedelta(0)

    @property
    def ok(self) -> bool:
        """True when nothing failed and nothing was left over by a cancel."""
        return not self.failed and not self.remaining

    def outcome(self, dlq_id: str) -> str:
        """``replayed``, ``skipped``, ``failed`` or ``remaining`` for a selected id.

        An id this report does not hold raises `streamlab.errors.NotFoundError`; a string
        that is no stream id, `streamlab.errors.ArgumentError`.
        """
        entry = _args.entry_id("dlq_id", dlq_id)
        found = self._outcome(entry)
        # Every selected id ends in one of the four: a remaining id is the only one to look
        # up in a list, so the check costs a scan only for ids not found elsewhere.
        if found == "remaining" and entry not in self.remaining:
            raise NotFoundError(
                f"DLQ entry {entry} is not in replay {self.replay_id}'s report "
                f"({len(self.selected):,} entries selected)"
            )
        return found

    def _outcome(self, dlq_id: str) -> str:
        if dlq_id in self.skipped:
            return "skipped"
        if dlq_id in self.failed:
            return "failed"
        if dlq_id in self.mapping:
            return "replayed"
        return "remaining"

    def __str__(self) -> str:
        mode = "DRY RUN, nothing written: " if self.dry_run else ""
        verb = "would replay" if self.dry_run else "replayed"
        text = (
            f"{mode}replay {self.replay_id} of {self.dlq!r}: {len(self.selected):,} selected, "
            f"{len(self.replayed):,} {verb}, {len(self.skipped):,} skipped, "
            f"{len(self.failed):,} failed"
        )
        if self.cancelled:
            text += f", cancelled with {len(self.remaining):,} remaining"
        return text + f" in {self.duration.total_seconds():.2f} s"

    def __repr__(self) -> str:
        # The id lists and mappings hold one item per event: far too long to print at 100k.
        return f"<ReplayReport: {self}>"

    def to_dataframe(self) -> pd.DataFrame:
        """One row per selected id: ``id`` (the DLQ id), ``outcome``, ``target``, ``new_id``,
        ``reason`` (NA where there is none; a dry run's ``new_id`` is always NA), as a
        `streamlab.frames.Table`."""
        import pandas as pd

        from streamlab.frames._display import Table
        from streamlab.frames.columns import typed

        ids = self.selected
        reasons = self.skipped | self.failed
        frame = pd.DataFrame(
            {
                "id": ids,
                "outcome": pd.Categorical(
                    [self._outcome(i) for i in ids],
                    categories=["replayed", "skipped", "failed", "remaining"],
                ),
                "target": [self.targets.get(i) for i in ids],
                "new_id": [self.mapping.get(i) for i in ids],
                "reason": [reasons.get(i) for i in ids],
            }
        )
        return Table(typed(frame))

    def groups(self) -> pd.DataFrame:
        """The report folded: one row per (outcome, target, reason) with its ``count`` and
        ``ids``, the largest first. A dry run's outcome reads ``would replay``."""
        frame = self.to_dataframe()
        if self.dry_run:
            frame["outcome"] = frame["outcome"].cat.rename_categories({"replayed": "would replay"})
        keys = ["outcome", "target", "reason"]
        grouped = frame.groupby(keys, observed=True, dropna=False, sort=False)
        out = grouped["id"].agg(count="size", ids=list).reset_index()
        out["count"] = out["count"].astype("Int64")
        return out.sort_values("count", ascending=False, kind="stable").reset_index(drop=True)

    def _repr_html_(self) -> str:
        import pandas as pd

        rows = []
        for outcome, target, reason, count, group_ids in self.groups().to_dict("split")["data"]:
            ids = ", ".join(_nowrap(i) for i in group_ids[:200]) + (" …" if count > 200 else "")
            cells = "".join(
                f"<td{_PAD}>{'' if pd.isna(v) else html.escape(str(v))}</td>"
                for v in (outcome, target, reason)
            )
            rows.append(
                f"<tr>{cells}<td style='text-align:right;padding:0 .8em'>{count:,}</td>"
                f"<td><details><summary>{count:,} DLQ ids</summary>"
                f"<code style='white-space:normal'>{ids}</code></details></td></tr>"
            )
        head = "".join(
            f"<th{_PAD}>{h}</th>" for h in ("outcome", "target", "reason", "count", "ids")
        )
        table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        return f"<p><b>{html.escape(str(self))}</b></p>{table if rows else ''}"


def _nowrap(entry_id: str) -> str:
    """A stream id that a browser does not break at its hyphen."""
    return f"<span style='white-space:nowrap'>{html.escape(entry_id)}</span>"


# -- replaying ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Plan:
    entry: _Entry
    target: str
    replay_count: int
    group: bytes | None


class _Replayer:
    """Runs the planned script calls in pipelined batches and fills the report."""

    def __init__(self, c: RedisStreamsClient, report: ReplayReport, *, ledger_ttl: int) -> None:
        self.c = c
        self.report = report
        self.script = c.scripts.replay
        self.ledger = ledger_key(report.dlq, report.replay_id)
        self.ttl = ledger_ttl
        self.keys_tail = [replayed_key(report.dlq), self.ledger]
        self.loaded = False
        self.head = [
            b"1" if report.dry_run else b"0",
            b"1" if report.keep_in_dlq else b"0",
            report.replay_id.encode(),
        ]

    def run_batch(self, batch: Sequence[_Plan]) -> None:
        sha, dlq, tail, head = self.script.sha, self.report.dlq, self.keys_tail, self.head
        stamp = MarkerStamp(self.report.replay_id, datetime.now(UTC))
        keys = [dlq, "", *tail]
        apart: dict[int, tuple[_Plan, list[bytes]]] = {}
        commands: list[tuple[Any, ...]] = []
        for i, plan in enumerate(batch):
            marker = stamp.fields(plan.entry.id, plan.replay_count, plan.group or b"")
            fields = [*plan.entry.original(), *marker]
            if len(fields) > LUA_MAX_VALUES:
                apart[i] = plan, fields  # too many for Lua: a transaction of its own, below
                continue
            commands.append((
                "EVALSHA", sha, 4, dlq, plan.target, *tail, plan.entry.id, *head,
                plan.group or b"", *fields,
            ))  # fmt: skip
        expiring = bool(self.ttl and not self.report.dry_run)
        if expiring:
            commands.append(("EXPIRE", self.ledger, self.ttl))
        replies: list[Any] = self._execute(commands) if commands else []
        expired = replies.pop() if expiring and replies else None
        for i, (plan, fields) in sorted(apart.items()):
            keys[1] = plan.target
            try:
                reply: Any = replay_tx(
                    self.c.redis,
                    keys,
                    entry_id=plan.entry.id,
                    dry_run=self.report.dry_run,
                    keep_in_dlq=self.report.keep_in_dlq,
                    replay_id=self.report.replay_id,
                    group=plan.group or b"",
                    fields=fields,
                )
            except redis.ResponseError as exc:
                reply = exc
            replies.insert(i, reply)
        if apart and expiring and not isinstance(expired, Exception):
            try:
                self.c.redis.expire(self.ledger, self.ttl)
            except redis.ResponseError as exc:
                expired = exc
        for plan, reply in zip(batch, replies, strict=False):
            self.record(plan, reply)
        if isinstance(expired, Exception):  # the batch is recorded; the ledger lacks its TTL
            denied = permission_error(expired)
            raise denied or expired from expired

    def _execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The batch's replies, an error reply as its exception. A plain client sends it
        through `send_packed` and loads the script where the server says NOSCRIPT, sending
        those calls again (they did not run); a cluster pipeline loads it once, first."""
        r = self.c.redis
        try:
            if is_cluster(r):
                if not self.loaded:
                    r.script_load(self.script.script)
                    self.loaded = True
                pipe = r.pipeline(transaction=False)
                for command in commands:
                    pipe.execute_command(*command)
                replies: list[Any] = pipe.execute(raise_on_error=False)
                return replies
            replies = send_packed(r, commands, self.script)
        except redis.ResponseError as exc:  # loading the script (SCRIPT LOAD)
            denied = permission_error(exc)
            if denied is None:
                raise
            raise denied from exc
        return replies

    def record(self, plan: _Plan, reply: Any) -> None:
        report, dlq_id = self.report, plan.entry.id
        if isinstance(reply, Exception):
            if isinstance(reply, redis.ConnectionError):
                raise reply
            denied = permission_error(reply)
            if denied is not None:
                # Not this entry's fault: every entry would fail the same way. Nothing of it
                # was written (replay.lua checks its rights before its first write).
                raise denied from reply
            report.failed[dlq_id] = f"{type(reply).__name__}: {reply}"
            return
        status, detail = reply[0].decode(), reply[1].decode("utf-8", "replace")
        if status in ("ok", "dry"):
            report.replayed.append(dlq_id)
            report.mapping[dlq_id] = detail if status == "ok" else None
        elif status == "marked":
            run, new_id, target = [*detail.split("\n", 2), "", ""][:3]
            report.skipped[dlq_id] = (
                f"already replayed (kept in the DLQ) by run {run} into {target!r} as {new_id}"
            )
        elif status == "done":
            new_id, _, target = [*detail.split("\n", 2), "", ""][:3]
            report.skipped[dlq_id] = f"already replayed by this run into {target!r} as {new_id}"
            report.mapping[dlq_id] = new_id
        elif status == "gone":
            report.skipped[dlq_id] = (
                "no longer in the DLQ (replayed by another run, or deleted or trimmed)"
            )
        elif status == "full":
            report.failed[dlq_id] = (
                f"target {plan.target!r} has exhausted the last possible ID: XADD would fail"
            )
        else:
            report.failed[dlq_id] = f"target {plan.target!r} is a {detail}, not a stream"


def _plan(
    selection: ReplaySelection,
    report: ReplayReport,
    target: str | None,
    for_group: str | FailedGroup | None,
) -> list[_Plan]:
    """Targets, replay counts and groups; skipped / failed entries go straight to the report."""
    plans: list[_Plan] = []
    fixed_group = None if isinstance(for_group, FailedGroup) or for_group is None else for_group
    for entry in selection._entries:
        report.selected.append(entry.id)
        dest = target or entry.text(b"dlq_source_stream")
        if not dest:
            report.skipped[entry.id] = (
                "no dlq_source_stream field and no target given: pass target= to replay it"
            )
            continue
        report.targets[entry.id] = dest
        prior = entry.raw.get(_COUNT_FIELD, b"0") or b"0"
        if not (prior.isdigit() and len(prior) < 18):
            # The value itself stays out of the text: error texts never carry field values.
            report.failed[entry.id] = (
                f"DLQ entry {entry.id}: field {_COUNT_FIELD.decode()!r} is not a count"
            )
            continue
        count = int(prior) + 1
        if isinstance(for_group, FailedGroup):
            group = entry.raw.get(b"dlq_group") or None
        else:
            group = fixed_group.encode() if fixed_group else None
        plans.append(_Plan(entry, dest, count, group))
    return plans


def _check_slots(c: RedisStreamsClient, dlq: str, replay_id: str, targets: Iterable[str]) -> None:
    if not is_cluster(c.redis):
        return
    for dest in set(targets):
        check_same_slot(dlq, dest, replayed_key(dlq), ledger_key(dlq, replay_id))


def _pace(cancel: Cancel | None, delay: float) -> None:
    if delay <= 0:
        return
    if cancel is not None:
        cancel.wait(delay)
    else:
        time.sleep(delay)


def _batches(
    plans: list[_Plan], size: int, rate: float | None, cancel: Cancel | None
) -> Iterator[list[_Plan]]:
    """Batches of ``plans``, paced to ``rate`` events/s, stopping when ``cancel`` is set."""
    if rate is not None:
        # Batches of ~0.1 s worth of events keep a slow replay smooth and promptly cancellable.
        size = min(size, max(1, int(rate / 10)))
    start = time.monotonic()
    sent = 0
    for i in range(0, len(plans), size):
        if rate is not None:
            _pace(cancel, start + sent / rate - time.monotonic())
        if cancel is not None and cancel.is_set():
            return
        batch = plans[i : i + size]
        yield batch
        sent += len(batch)


def replay_dlq(
    client: ClientLike,
    stream: str,
    selection: ReplaySelection | None = None,
    *,
    dlq: str | None = None,
    target: str | None = None,
    dry_run: bool = False,
    rate: float | None = None,
    batch_size: int = 500,
    keep_in_dlq: bool = False,
    progress: bool | None = None,
    for_group: str | FailedGroup | None = FAILED_GROUP,
    cancel: Cancel | None = None,
    replay_id: str | None = None,
    ledger_ttl: timedelta | float | str | None = DEFAULT_LEDGER_TTL,
    **filters: Any,
) -> ReplayReport:
    """Re-inject DLQ entries of ``stream`` (the source stream's name) and report what happened.

    Replays ``selection`` (from `select_dlq`), or the entries the ``filters`` (the keyword
    arguments of `select_dlq`) select; with neither, the whole DLQ.

    - ``dlq``: the DLQ to replay from, when it is not the client's DLQ of ``stream``.
    - ``target``: the stream to add the events to; by default each entry's source stream
      (``dlq_source_stream``). Entries with neither are skipped with the reason.
    - ``dry_run``: run every check (in the same script, against the live data) and write
      nothing; the report equals a real run's except that ``mapping`` values are None.
    - ``rate``: at most that many events per second (ignored by a dry run);
      ``batch_size``: script calls per pipeline round trip.
    - ``keep_in_dlq``: leave the entries in the DLQ, marked in ``<dlq>:replayed``.
    - ``progress``: True shows a tqdm bar (needs ``streamlab[notebook]``), None shows one in
      a notebook when tqdm is installed, False never.
    - ``for_group``: the marker's group stamped on the events: by default the group each
      event failed in (other groups ack and skip it); a group name; None for every group.
    - ``cancel``: a `threading.Event`; when set, the replay stops before the next batch and
      the report lists the rest in ``remaining``. Rerunning continues (idempotent).
    - ``replay_id``: reuse a run id (e.g. an interrupted run's) so the rerun's events join its
      ledger; default a new uuid4.
    - ``ledger_ttl``: how long `replay_outcome` can follow this run: a timedelta, seconds
      or text like ``"168h"`` / ``"P7D"`` (`streamlab.durations`), at least 1 s; None: forever.

    A bad argument raises `streamlab.errors.ArgumentError` naming it, before anything is
    read or written.

    Raises `ConfigError` before writing anything when a target cannot share the DLQ's cluster
    slot. A connection lost mid-run raises; every event is then either replayed or still in
    the DLQ, and running the replay again finishes the job.
    """
    c = as_client(client)
    dlq = dlq_name(c, stream, dlq)
    # Every argument is checked before the selection is read and anything is written.
    if target is not None:
        _args.name("target", target)
    batch_size = _args.count("batch_size", batch_size, minimum=1)
    if rate is not None:
        rate = _args.positive_number("rate", rate)
    if replay_id is not None:
        check_replay_id(replay_id)
    ttl = _ttl(ledger_ttl)
    if not (for_group is None or isinstance(for_group, FailedGroup)):
        _args.name("for_group", for_group)
    if cancel is not None and not all(
        callable(getattr(cancel, m, None)) for m in ("is_set", "wait")
    ):
        raise ArgumentError(f"cancel: expected a threading.Event (is_set, wait), got {cancel!r}")
    selection = _selection(c, stream, dlq, selection, filters)
    report = ReplayReport(
        stream, dlq, replay_id or str(uuid.uuid4()), dry_run, keep_in_dlq=keep_in_dlq
    )
    clock = time.perf_counter()
    plans = _plan(selection, report, target, for_group)
    _check_slots(c, dlq, report.replay_id, (p.target for p in plans))
    replayer = _Replayer(c, report, ledger_ttl=ttl)
    bar = progress_bar(progress, len(plans), "dry run" if dry_run else "replay", unit="events")
    done = 0
    try:
        for batch in _batches(plans, batch_size, None if dry_run else rate, cancel):
            replayer.run_batch(batch)
            done += len(batch)
            bar.update(len(batch))
    except redis.ConnectionError as exc:
        exc.add_note(
            f"replay {report.replay_id} interrupted after {done:,} of {len(plans):,} events; "
            "each is either replayed or still in the DLQ: run the replay again to finish"
        )
        raise
    finally:
        bar.close()
    report.remaining = [p.entry.id for p in plans[done:]]
    report.cancelled = bool(report.remaining)
    report.duration = timedelta(seconds=time.perf_counter() - clock)
    _log.info(
        "%s", report,
        extra={"stream": stream, "dlq": dlq, "replay_id": report.replay_id,
               "dry_run": dry_run, "replayed": len(report.replayed),
               "skipped": len(report.skipped), "failed": len(report.failed),
               "remaining": len(report.remaining)},
    )  # fmt: skip
    return report


def check_replay_id(replay_id: object) -> str:
    """``replay_id`` if a marker can carry it; `ArgumentError` naming it otherwise."""
    if not isinstance(replay_id, str) or not valid_replay_id(replay_id):
        raise ArgumentError(
            "replay_id: 1 to 128 of the characters A-Z a-z 0-9 . _ : - (a uuid4 fits), "
            f"got {replay_id!r}"
        )
    return replay_id


def _ttl(ledger_ttl: object) -> int:
    """``ledger_ttl`` in whole seconds (EXPIRE's unit, rounded up); 0 for None (forever)."""
    if ledger_ttl is None:
        return 0
    ttl = math.ceil(_args.duration("ledger_ttl", ledger_ttl).total_seconds())
    if ttl < 1:
        # 0 would read as "no expiry" below, the opposite of what a 0 s TTL asks for.
        raise ArgumentError(
            f"ledger_ttl: must be at least 1 s (None keeps the ledger forever), got {ledger_ttl!r}"
        )
    return ttl


def _selection(
    c: RedisStreamsClient,
    stream: str,
    dlq: str,
    selection: ReplaySelection | None,
    filters: Mapping[str, Any],
) -> ReplaySelection:
    unknown = set(filters) - {*KEYWORDS, "filters", "since", "until", "limit"}
    if unknown:
        raise TypeError(
            f"replay_dlq() got unknown argument(s) {sorted(unknown)}; "
            f"filters are {', '.join(KEYWORDS)}, and since, until, limit"
        )
    if selection is None:
        return select_dlq(c, stream, dlq=dlq, **filters)
    check_selection(selection)
    if filters:
        raise ArgumentError("pass either a selection or filters to replay_dlq, not both")
    if selection.dlq != dlq:
        raise ArgumentError(
            f"the selection is of DLQ {selection.dlq!r} but stream {stream!r} has DLQ {dlq!r}"
        )
    return selection
