"""What became of a replay run's events, per consuming group: `replay_outcome`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import redis

from streamlab import _args
from streamlab.client import ClientLike, RedisStreamsClient, acl_errors, as_client, dlq_name
from streamlab.errors import ArgumentError, NotFoundError
from streamlab.ids import parse_id as _parse_id
from streamlab.keys import ledger_key
from streamlab.records import PendingEntry, ReplayMarker, group_infos
from streamlab.replay._entries import PAGE, _chunks, _Entry, _page
from streamlab.replay.run import check_replay_id

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["replay_outcome"]

_OUTCOME_COLUMNS = (
    "id",
    "target",
    "new_id",
    "group",
    "state",
    "consumer",
    "deliveries",
    "idle",
    "dlq_entry_id",
    "error_type",
    "error",
)
_STATES = ("acked", "pending", "dead_lettered", "waiting", "gone", "no_group")


def replay_outcome(
    client: ClientLike,
    stream: str,
    replay_id: str,
    *,
    dlq: str | None = None,
    targets: Sequence[str] | None = None,
) -> pd.DataFrame:
    """What became of the events replay run ``replay_id`` injected from the DLQ of ``stream``.

    One row per event and consuming group (its marker's group, or every group of the
    target when it has none), with ``state``:

    - ``acked``: delivered to the group (id <= its last-delivered id), not pending, not in DLQ;
    - ``pending``: delivered and not acked yet (``consumer``, ``deliveries``, ``idle``; a
      retry waiting for its backoff shows consumer ``streamlab:retry``);
    - ``dead_lettered``: back in the target's DLQ (``dlq_entry_id``, ``error_type``, ``error``);
    - ``waiting``: not delivered to the group yet;
    - ``gone``: not delivered and no longer in the target (deleted or trimmed);
    - ``no_group``: the target has no such group (nobody consumes it).

    Columns: ``id`` (the DLQ id), ``target``, ``new_id``, ``group``, ``state``, ``consumer``,
    ``deliveries``, ``idle``, ``dlq_entry_id``, ``error_type``, ``error`` (NA where they do not
    apply), typed as every frame (`streamlab.frames.columns`), as a `streamlab.frames.Table`.

    The events come from the run's ledger (``<dlq>:replay:<replay_id>``). Once it has expired
    (``ledger_ttl``), the target streams are scanned for entries whose complete `ReplayMarker`
    names ``replay_id``:
    ``stream`` itself, or the ``targets`` given. ``dlq`` is the DLQ the run read (default:
    the client's routing of ``stream``).

    A ``replay_id`` no run could have (`replay_dlq`'s rule) raises
    `streamlab.errors.ArgumentError`. A run of which neither trace is left (a wrong id, a
    run that replayed nothing, or an expired ledger whose events are gone) raises
    `streamlab.errors.NotFoundError`.
    """
    c = as_client(client)
    dlq = dlq_name(c, stream, dlq)
    check_replay_id(replay_id)
    if targets is not None:
        if isinstance(targets, str) or not isinstance(targets, Iterable):
            raise ArgumentError(f"targets: expected a list of stream names, got {targets!r}")
        targets = [_args.name("targets", t) for t in targets]
    with acl_errors():
        injected = _ledger(c.redis, ledger_key(dlq, replay_id))
        if not injected:
            injected = _scan_for_run(c.redis, targets or [stream], replay_id)
        if not injected:
            raise NotFoundError(
                f"no replay run {replay_id!r} of DLQ {dlq!r}: the id is wrong, the run "
                "replayed nothing, or its ledger expired (ledger_ttl) and its events are no "
                f"longer in {', '.join(map(repr, targets or [stream]))}"
            )
        by_target: dict[str, list[_Injected]] = {}
        for dlq_id, (new_id, dest, group) in injected.items():
            by_target.setdefault(dest, []).append((dlq_id, new_id, group))
        rows: list[dict[str, Any]] = []
        for dest, items in by_target.items():
            rows += _target_outcome(c, dest, sorted(items, key=lambda i: _parse_id(i[1], "id")))
    return _outcome_frame(rows)


# (DLQ id, new id, replay group or None)
_Injected = tuple[str, str, bytes | None]


def _ledger(r: Any, key: str) -> dict[str, tuple[str, str, bytes | None]]:
    """DLQ id -> (new id, target, replay group or None) of one run."""
    found: dict[str, tuple[str, str, bytes | None]] = {}
    for name, value in r.hscan_iter(key, count=PAGE):
        new_id, group, dest = value.split(b"\n", 2)
        found[name.decode()] = (new_id.decode(), dest.decode(), group or None)
    return found


def _scan_for_run(
    r: Any, targets: Sequence[str], replay_id: str
) -> dict[str, tuple[str, str, bytes | None]]:
    found: dict[str, tuple[str, str, bytes | None]] = {}
    for dest in targets:
        for raw_id, raw in _page(r, dest, "-", "+"):
            marker = ReplayMarker.from_fields(raw)
            if marker is not None and marker.replay_id == replay_id:
                group = marker.group.encode("utf-8", "surrogateescape") or None
                found[marker.source_id] = (raw_id.decode(), dest, group)
    return found


def _gone(r: Any, target: str, new_ids: list[str]) -> set[str]:
    """The replayed entries no longer in ``target`` (deleted or trimmed)."""
    gone: set[str] = set()
    for chunk in _chunks(new_ids, PAGE):
        pipe = r.pipeline(transaction=False)
        for new_id in chunk:
            pipe.xrange(target, new_id, new_id, count=1)
        gone.update(i for i, hit in zip(chunk, pipe.execute(), strict=True) if not hit)
    return gone


def _last_delivered(r: Any, target: str) -> dict[str, tuple[int, int]]:
    try:
        groups = r.xinfo_groups(target)
    except redis.ResponseError as exc:
        if "no such key" in str(exc):
            return {}
        raise
    return {g.name: _parse_id(g.last_delivered_id, "group") for g in group_infos(groups)}


def _pending(
    r: Any, target: str, pairs: list[tuple[str, str]]
) -> dict[tuple[str, str], PendingEntry]:
    """XPENDING rows for (new id, group) pairs, pipelined."""
    found: dict[tuple[str, str], PendingEntry] = {}
    for chunk in _chunks(pairs, PAGE):
        pipe = r.pipeline(transaction=False)
        for new_id, group in chunk:
            pipe.xpending_range(target, group, new_id, new_id, 1)
        for pair, hit in zip(chunk, pipe.execute(), strict=True):
            if hit:
                found[pair] = PendingEntry.from_reply(hit[0])
    return found


def _dead_letters(
    c: RedisStreamsClient, target: str, new_ids: list[str]
) -> dict[str, list[_Entry]]:
    """DLQ entries of ``target`` made from the replayed entries (added after the first)."""
    wanted = set(new_ids)
    found: dict[str, list[_Entry]] = {}
    start = new_ids[0].split("-", 1)[0]
    for raw_id, raw in _page(c.redis, c.dlq_stream(target), start, "+"):
        source_id = raw.get(b"dlq_source_id", b"").decode()
        if source_id in wanted and raw.get(b"dlq_source_stream", b"").decode() == target:
            found.setdefault(source_id, []).append(_Entry(raw_id.decode(), raw))
    return found


def _target_outcome(
    c: RedisStreamsClient, target: str, items: list[_Injected]
) -> list[dict[str, Any]]:
    new_ids = [new_id for _, new_id, _ in items]
    delivered = _last_delivered(c.redis, target)
    wanted: list[tuple[str, str, str | None]] = []
    for dlq_id, new_id, group in items:
        if group is not None:
            wanted.append((dlq_id, new_id, group.decode()))
        else:
            wanted += [(dlq_id, new_id, g) for g in delivered] or [(dlq_id, new_id, None)]
    pending = _pending(c.redis, target, [(i, g) for _, i, g in wanted if g in delivered])
    dead = _dead_letters(c, target, new_ids)
    gone = _gone(c.redis, target, new_ids)
    rows = []
    for dlq_id, new_id, name in wanted:
        row: dict[str, Any] = {"id": dlq_id, "target": target, "new_id": new_id}
        row["group"] = name
        state = _state(
            new_id, name, delivered=delivered, pending=pending, dead=dead, gone=new_id in gone
        )
        rows.append(row | state)
    return rows


def _state(
    new_id: str,
    group: str | None,
    *,
    delivered: Mapping[str, tuple[int, int]],
    pending: Mapping[tuple[str, str], PendingEntry],
    dead: Mapping[str, list[_Entry]],
    gone: bool,
) -> dict[str, Any]:
    if group is None or group not in delivered:
        return {"state": "no_group"}
    failed = [e for e in dead.get(new_id, []) if e.text(b"dlq_group") in ("", group)]
    if failed:
        last = failed[-1]
        return {
            "state": "dead_lettered",
            "dlq_entry_id": last.id,
            "error_type": last.text(b"dlq_error_type"),
            "error": last.text(b"dlq_error"),
        }
    row = pending.get((new_id, group))
    if row is not None:
        return {
            "state": "pending",
            "consumer": row.consumer,
            "deliveries": row.deliveries,
            "idle": timedelta(milliseconds=row.idle_ms),
        }
    if _parse_id(new_id, "id") <= delivered[group]:
        return {"state": "acked"}
    return {"state": "gone" if gone else "waiting"}


def _outcome_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    import pandas as pd

    from streamlab.frames._display import Table
    from streamlab.frames.columns import typed

    data = {name: [row.get(name) for row in rows] for name in _OUTCOME_COLUMNS}
    frame = pd.DataFrame(data, columns=list(_OUTCOME_COLUMNS))
    frame["state"] = pd.Categorical(frame["state"], categories=list(_STATES))
    return Table(typed(frame))
