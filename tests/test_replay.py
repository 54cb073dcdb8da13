"""Replay against a real server: selection, atomic and idempotent re-injection, reports."""

from __future__ import annotations

import functools
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
import redis
from test_replay_helpers import dlq_fields, fill_dlq

from streamlab.client import RedisStreamsClient, connect
from streamlab.embedded import EmbeddedServer
from streamlab.errors import ArgumentError, ConfigError, MissingDependencyError, NotFoundError
from streamlab.events import StreamMessage, decode_message
from streamlab.records import DLQ_FIELDS, Failure
from streamlab.replay import (
    ReplayReport,
    ledger_key,
    replay_dlq,
    replay_outcome,
    replayed_key,
    select_dlq,
    try_handler,
)

Client = RedisStreamsClient
PUSH = "webhook.github.push"


def mixed_dlq(c: Client, stream: str, n: int = 12) -> tuple[list[str], list[dict[str, Any]]]:
    """``n`` DLQ entries varying every attribute a filter looks at."""
    entries = []
    for i in range(n):
        entries.append(
            dlq_fields(
                i,
                stream,
                event_type=("webhook.github.push", "webhook.github.issues", "other")[i % 3],
                tenant=f"tenant-{i % 2}",
                repository=("acme/api", "acme/web")[i % 4 // 2],
                error_type=("TimeoutError", "KeyError")[i % 5 == 0],
                error=f"Upstream {'TIMED OUT' if i % 2 else 'refused'} #{i}",
            )
        )
    return fill_dlq(c.redis, c.dlq_stream(stream), entries), entries


def expect(ids: list[str], entries: list[dict[str, Any]], pred: Any) -> list[str]:
    return [i for i, e in zip(ids, entries, strict=True) if pred(e)]


@pytest.mark.parametrize(
    ("filters", "pred"),
    [
        ({"event_type": "webhook.github.push"}, lambda e: e["event_type"] == PUSH),
        ({"event_type": ["other", "webhook.github.issues"]}, lambda e: e["event_type"] != PUSH),
        ({"tenant_id": ["tenant-1"]}, lambda e: e["tenant_id"] == "tenant-1"),
        ({"repository": "acme/web"}, lambda e: e["repository"] == "acme/web"),
        ({"error_type": ["KeyError"]}, lambda e: e["dlq_error_type"] == "KeyError"),
        ({"error_contains": "timed out"}, lambda e: "TIMED OUT" in e["dlq_error"]),
        ({"where": lambda ev: ev.payload["n"] > 8}, lambda e: int(e["id"][4:]) > 8),
    ],
)  # fmt: skip
def test_each_filter_alone(
    streams_client: Client, stream_name: str, filters: dict[str, Any], pred: Any
) -> None:
    ids, entries = mixed_dlq(streams_client, stream_name)
    sel = select_dlq(streams_client, stream_name, **filters)
    wanted = expect(ids, entries, pred)
    assert 0 < len(wanted) < len(ids)
    assert sel.ids == wanted
    assert len(sel) == len(wanted)


def test_filters_combined(streams_client: Client, stream_name: str) -> None:
    ids, entries = mixed_dlq(streams_client, stream_name, 24)
    filters: dict[str, Any] = {
        "tenant_id": "tenant-1",
        "error_type": ["TimeoutError"],
        "error_contains": "upstream",
        "repository": ["acme/api", "acme/web"],
        "event_type": [PUSH, "webhook.github.issues"],
        # Full DLQ ids, taken exactly (entries added in one pipeline may share a millisecond).
        "since": ids[2],
        "until": ids[20],
        "ids": ids[:13] + ids[14:],
        "where": lambda ev: ev.payload["n"] != 3,
    }
    sel = select_dlq(streams_client, stream_name, **filters)
    wanted = [
        dlq_id
        for n, (dlq_id, e) in enumerate(zip(ids, entries, strict=True))
        if e["tenant_id"] == "tenant-1"
        and e["dlq_error_type"] == "TimeoutError"
        and e["event_type"] != "other"
        and 2 <= n <= 20  # since, until
        and dlq_id != ids[13]
        and e["id"] != "evt-3"
    ]
    assert wanted == [ids[7], ids[9], ids[19]]
    assert sel.ids == wanted
    assert sel.ids == [m.id for m in sel]
    # Each of these filters, left out, lets in an entry all the others accept: each one bites.
    for name in ("event_type", "since", "until", "ids", "where"):
        looser = select_dlq(streams_client, stream_name, **(filters | {name: None}))
        assert set(looser.ids) > set(wanted), name
    tenant_1 = expect(ids, entries, lambda e: e["tenant_id"] == "tenant-1")
    first_two = select_dlq(streams_client, stream_name, tenant_id="tenant-1", limit=2)
    assert first_two.ids == tenant_1[:2]


def test_ids_from_list_series_and_index(streams_client: Client, stream_name: str) -> None:
    ids, _ = mixed_dlq(streams_client, stream_name)
    chosen = [ids[7], ids[2], ids[5]]
    for given in (chosen, pd.Series(chosen), pd.Index(chosen)):
        sel = select_dlq(streams_client, stream_name, ids=given)
        assert sel.ids == sorted(chosen, key=ids.index)
        assert sel.missing_ids == []
    sel = select_dlq(streams_client, stream_name, ids=[ids[1], "1-1"], event_type="nope")
    assert sel.ids == []
    assert sel.missing_ids == ["1-1"]
    with pytest.raises(ArgumentError, match="'abc' is not a stream id"):
        select_dlq(streams_client, stream_name, ids=["abc"])


def test_since_and_until_bound_by_dead_letter_time(
    streams_client: Client, stream_name: str
) -> None:
    dlq = streams_client.dlq_stream(stream_name)
    r = streams_client.redis
    for ms in (1_000, 2_000, 3_000):
        r.xadd(dlq, dlq_fields(ms, stream_name), id=f"{ms}-0")
    at = datetime.fromtimestamp(2, UTC)
    assert select_dlq(streams_client, stream_name, since=at).ids == ["2000-0", "3000-0"]
    assert select_dlq(streams_client, stream_name, until=at).ids == ["1000-0", "2000-0"]
    assert select_dlq(streams_client, stream_name, since=at, until=at).ids == ["2000-0"]
    assert select_dlq(streams_client, stream_name, since="2500").ids == ["3000-0"]
    assert select_dlq(streams_client, stream_name, since=timedelta(hours=1)).ids == []
    assert select_dlq(streams_client, stream_name, since=2000).ids == ["2000-0", "3000-0"]
    assert select_dlq(streams_client, stream_name, until="1970-01-01T00:00:01Z").ids == ["1000-0"]
    # A naive datetime would silently mean the machine's zone: refused, naming the argument.
    with pytest.raises(ArgumentError, match=r"since: .* has no time zone"):
        select_dlq(streams_client, stream_name, since=at.replace(tzinfo=None))


def test_full_stream_ids_bound_within_one_millisecond(
    streams_client: Client, stream_name: str
) -> None:
    dlq = streams_client.dlq_stream(stream_name)
    every = [f"5000-{seq}" for seq in range(5)] + ["6000-0"]
    for entry_id in every:
        streams_client.redis.xadd(dlq, dlq_fields(0, stream_name), id=entry_id)

    def chosen(**bounds: Any) -> list[str]:
        return select_dlq(streams_client, stream_name, **bounds).ids

    assert chosen(until="5000-1") == ["5000-0", "5000-1"]
    assert chosen(since="5000-3") == ["5000-3", "5000-4", "6000-0"]
    assert chosen(since="5000-1", until="5000-3") == ["5000-1", "5000-2", "5000-3"]
    assert chosen(since="5000-2", until="5000-2") == ["5000-2"]
    assert chosen(since="5000-3", until="5000-1") == []
    assert chosen(since=" 5000-4 ", until="6000-0") == ["5000-4", "6000-0"]
    # Milliseconds alone, or a time, still cover the whole millisecond.
    assert chosen(since="5000", until="5000") == every[:5]
    assert chosen(until=datetime.fromtimestamp(5, UTC)) == every[:5]
    assert chosen(since="5000-2", until="5000-3", ids=every) == ["5000-2", "5000-3"]
    report = replay_dlq(streams_client, stream_name, since="5000-1", until="5000-2")
    assert report.replayed == ["5000-1", "5000-2"]
    assert [i.decode() for i, _ in streams_client.redis.xrange(dlq)] == [
        "5000-0",
        "5000-3",
        "5000-4",
        "6000-0",
    ]


def test_undecodable_entries_selectable_except_by_where(
    streams_client: Client, stream_name: str
) -> None:
    bad = dlq_fields(0, stream_name, error_type="DecodeError")
    bad["payload"] = b"{not json \xff"
    good = dlq_fields(1, stream_name)
    bad_id, good_id = fill_dlq(
        streams_client.redis, streams_client.dlq_stream(stream_name), [bad, good]
    )
    assert select_dlq(streams_client, stream_name, error_type="DecodeError").ids == [bad_id]
    assert select_dlq(streams_client, stream_name, tenant_id="tenant-001").ids == [bad_id, good_id]
    assert select_dlq(streams_client, stream_name, where=lambda ev: True).ids == [good_id]
    [msg, _] = list(select_dlq(streams_client, stream_name))
    assert msg.event is None
    assert msg.decode_error is not None


def test_paging_over_many_pages(streams_client: Client, stream_name: str) -> None:
    entries = [dlq_fields(i, stream_name, tenant=f"t{i % 3}") for i in range(2_345)]
    ids = fill_dlq(streams_client.redis, streams_client.dlq_stream(stream_name), entries)
    assert select_dlq(streams_client, stream_name).ids == ids
    assert select_dlq(streams_client, stream_name, tenant_id="t1").ids == ids[1::3]
    assert len(select_dlq(streams_client, stream_name, limit=1500)) == 1500


def written(r: redis.Redis, stream: str) -> list[tuple[str, dict[bytes, bytes]]]:
    return [(i.decode(), f) for i, f in r.xrange(stream)]


def test_replay_resets_retry_count_and_keeps_bytes(
    streams_client: Client, stream_name: str
) -> None:
    r = streams_client.redis
    dlq = streams_client.dlq_stream(stream_name)
    fields = dlq_fields(0, stream_name, extra={"blob": b"\x00\xff\xfe raw", "sender_name": "mona"})
    [dlq_id] = fill_dlq(r, dlq, [fields])
    original = r.xrange(dlq)[0][1]
    report = replay_dlq(streams_client, stream_name)
    assert report.replayed == [dlq_id]
    assert isinstance(report.duration, timedelta)
    assert report.duration > timedelta(0)
    assert r.xlen(dlq) == 0
    [(new_id, out)] = written(r, stream_name)
    assert report.mapping == {dlq_id: new_id}
    assert report.targets == {dlq_id: stream_name}
    kept = {k: v for k, v in original.items() if k.decode() not in DLQ_FIELDS}
    assert [k for k in out if k in kept] == list(kept)  # original order kept
    assert {k: out[k] for k in kept if k != b"retry_count"} == {
        k: v for k, v in kept.items() if k != b"retry_count"
    }
    assert out[b"retry_count"] == b"0"
    assert out[b"streamlab:replay_id"] == report.replay_id.encode()
    assert out[b"streamlab:replay_of"] == dlq_id.encode()
    assert out[b"streamlab:replay_count"] == b"1"
    assert out[b"streamlab:replay_group"] == b"g"
    assert datetime.fromisoformat(out[b"streamlab:replayed_at"].decode()) <= datetime.now(UTC)
    assert not any(k.startswith(b"dlq_") for k in out)
    msg = decode_message(stream_name, new_id, out)
    assert msg.event is not None
    assert msg.event.retry_count == 0
    assert msg.event.id == "evt-0"


def test_replay_count_grows_when_an_event_cycles(streams_client: Client, stream_name: str) -> None:
    r = streams_client.redis
    dlq = streams_client.dlq_stream(stream_name)
    fill_dlq(r, dlq, [dlq_fields(0, stream_name)])
    for expected in (b"1", b"2", b"3"):
        replay_dlq(streams_client, stream_name)
        [(new_id, out)] = written(r, stream_name)[-1:]
        assert out[b"streamlab:replay_count"] == expected
        # Fails again: the consumer dead-letters the raw fields, marker included.
        again = dict(out)
        again.update(Failure(error="x", error_type="E", source_stream=stream_name).to_fields())
        fill_dlq(r, dlq, [again])
        r.xdel(stream_name, new_id)


def test_dry_run_equals_real_run_and_writes_nothing(
    streams_client: Client, stream_name: str
) -> None:
    r = streams_client.redis
    dlq = streams_client.dlq_stream(stream_name)
    entries = [dlq_fields(i, stream_name) for i in range(20)]
    entries[3].pop("dlq_source_stream")
    entries[4]["streamlab:replay_count"] = "many"
    ids = fill_dlq(r, dlq, entries)
    sel = select_dlq(streams_client, stream_name)
    r.xdel(dlq, ids[5])  # deleted after the selection was made: gone for both runs
    r.hset(replayed_key(dlq), ids[6], "run-0\n1-1\nsomewhere")  # kept by an earlier run
    before = (r.xlen(dlq), r.exists(stream_name), r.hlen(replayed_key(dlq)))
    dry = replay_dlq(streams_client, stream_name, sel, dry_run=True, batch_size=7)
    assert (r.xlen(dlq), r.exists(stream_name), r.hlen(replayed_key(dlq))) == before
    assert not r.exists(ledger_key(dlq, dry.replay_id))
    real = replay_dlq(streams_client, stream_name, sel, batch_size=7)
    assert dry.dry_run
    assert not real.dry_run
    for name in ("selected", "replayed", "remaining", "targets"):
        assert getattr(dry, name) == getattr(real, name), name
    assert dry.skipped == real.skipped
    assert dry.failed == real.failed
    assert set(dry.skipped) == {ids[3], ids[5], ids[6]}
    assert "no dlq_source_stream" in dry.skipped[ids[3]]
    assert "already replayed" in dry.skipped[ids[6]]
    assert "'streamlab:replay_count'" in dry.failed[ids[4]]
    assert ids[4] in dry.failed[ids[4]]
    assert set(dry.mapping) == set(real.mapping) == set(real.replayed)
    assert set(dry.mapping.values()) == {None}
    assert r.ttl(ledger_key(dlq, real.replay_id)) > 29 * 24 * 3600
    assert r.xlen(stream_name) == len(real.replayed) == 16
    # What was not replayed is still in the DLQ: nothing lost.
    assert {i.decode() for i, _ in r.xrange(dlq)} == {ids[3], ids[4], ids[6]}


def test_second_replay_skips_everything(streams_client: Client, stream_name: str) -> None:
    r = streams_client.redis
    fill_dlq(
        r, streams_client.dlq_stream(stream_name), [dlq_fields(i, stream_name) for i in range(5)]
    )
    sel = select_dlq(streams_client, stream_name)
    first = replay_dlq(streams_client, stream_name, sel)
    second = replay_dlq(streams_client, stream_name, sel)
    assert len(first.replayed) == 5
    assert second.replayed == []
    assert set(second.skipped) == set(sel.ids)
    assert all("no longer in the DLQ" in why for why in second.skipped.values())
    resumed = replay_dlq(streams_client, stream_name, sel, replay_id=first.replay_id)
    assert all("already replayed by this run" in why for why in resumed.skipped.values())
    assert resumed.mapping == first.mapping
    assert r.xlen(stream_name) == 5


def test_replay_into_another_stream_without_groups(
    streams_client: Client, stream_name: str
) -> None:
    r = streams_client.redis
    streams_client.ensure_group(stream_name, "g")
    ids = fill_dlq(
        r, streams_client.dlq_stream(stream_name), [dlq_fields(i, stream_name) for i in range(3)]
    )
    other = stream_name + "-fixed"
    report = replay_dlq(streams_client, stream_name, target=other)
    assert report.replayed == ids
    assert set(report.targets.values()) == {other}
    assert r.xlen(other) == 3
    assert r.xlen(stream_name) == 0
    assert r.xinfo_groups(other) == []
    outcome = replay_outcome(streams_client, stream_name, report.replay_id)
    assert outcome["state"].tolist() == ["no_group"] * 3
    assert outcome["target"].tolist() == [other] * 3


def test_keep_in_dlq_marks_instead_of_deleting(streams_client: Client, stream_name: str) -> None:
    r = streams_client.redis
    dlq = streams_client.dlq_stream(stream_name)
    ids = fill_dlq(r, dlq, [dlq_fields(i, stream_name) for i in range(4)])
    first = replay_dlq(streams_client, stream_name, keep_in_dlq=True)
    assert first.replayed == ids
    assert r.xlen(dlq) == 4
    marks = r.hgetall(replayed_key(dlq))
    assert {k.decode() for k in marks} == set(ids)
    assert marks[ids[0].encode()].decode().split("\n") == [
        first.replay_id,
        first.mapping[ids[0]],
        stream_name,
    ]
    for keep in (True, False):
        again = replay_dlq(streams_client, stream_name, keep_in_dlq=keep)
        assert again.replayed == []
        assert all("kept in the DLQ" in why for why in again.skipped.values())
    assert r.xlen(stream_name) == 4
    assert r.xlen(dlq) == 4


def test_cancel_before_and_between_batches(streams_client: Client, stream_name: str) -> None:
    r = streams_client.redis
    ids = fill_dlq(
        r, streams_client.dlq_stream(stream_name), [dlq_fields(i, stream_name) for i in range(10)]
    )
    cancel = threading.Event()
    cancel.set()
    report = replay_dlq(streams_client, stream_name, cancel=cancel)
    assert report.cancelled
    assert report.remaining == ids
    assert not r.exists(stream_name)

    class AfterOneBatch(threading.Event):
        checks = 0

        def is_set(self) -> bool:
            self.checks += 1
            return self.checks > 1

    report = replay_dlq(streams_client, stream_name, batch_size=3, cancel=AfterOneBatch())
    assert report.cancelled
    assert report.replayed == ids[:3]
    assert report.remaining == ids[3:]
    assert not report.ok
    assert report.to_dataframe()["outcome"].value_counts()["remaining"] == 7
    rest = replay_dlq(streams_client, stream_name, rate=1000, batch_size=4)
    assert rest.replayed == ids[3:]
    assert rest.ok
    assert r.xlen(stream_name) == 10


@pytest.mark.parametrize("cancel", [None, threading.Event()], ids=["sleep", "cancel-wait"])
def test_rate_paces_the_replay(
    streams_client: Client, stream_name: str, cancel: threading.Event | None
) -> None:
    ids = fill_dlq(
        streams_client.redis,
        streams_client.dlq_stream(stream_name),
        [dlq_fields(i, stream_name) for i in range(60)],
    )
    began = time.monotonic()
    report = replay_dlq(streams_client, stream_name, rate=100, cancel=cancel)
    elapsed = time.monotonic() - began
    assert report.replayed == ids
    # 60 events at 100/s: the last of them may not start before 0.5 s (a lower bound only).
    assert elapsed >= 0.49
    assert report.duration >= timedelta(seconds=0.49)
    assert not report.cancelled


def test_concurrent_keep_in_dlq_replays_inject_each_event_once(
    streams_client: Client, stream_name: str, redis_url: str
) -> None:
    r = streams_client.redis
    dlq = streams_client.dlq_stream(stream_name)
    ids = fill_dlq(r, dlq, [dlq_fields(i, stream_name) for i in range(1000)])
    sel = select_dlq(streams_client, stream_name)
    start = threading.Barrier(2)
    reports: list[ReplayReport] = []
    errors: list[BaseException] = []

    def replay() -> None:
        client = connect(redis_url)
        try:
            start.wait()
            # Paced to ~0.5 s each, so that the two runs surely overlap.
            reports.append(
                replay_dlq(client, stream_name, sel, keep_in_dlq=True, rate=2000, batch_size=20)
            )
        except BaseException as exc:
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=replay) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(reports) == 2
    counts = Counter(f[b"id"].decode() for _, f in r.xrange(stream_name))
    assert counts == Counter(f"evt-{i}" for i in range(1000))  # each event once
    assert r.xlen(dlq) == 1000  # kept
    assert {k.decode() for k in r.hkeys(replayed_key(dlq))} == set(ids)
    first, second = (set(rep.replayed) for rep in reports)
    assert not first & second
    assert first | second == set(ids)
    for mine, theirs in ((reports[0], second), (reports[1], first)):
        assert set(mine.skipped) == theirs
        assert all("kept in the DLQ" in why for why in mine.skipped.values())


def test_entry_without_source_stream(streams_client: Client, stream_name: str) -> None:
    r = streams_client.redis
    fields = dlq_fields(0, stream_name)
    del fields["dlq_source_stream"]
    [dlq_id] = fill_dlq(r, streams_client.dlq_stream(stream_name), [fields])
    report = replay_dlq(streams_client, stream_name)
    assert report.skipped == {
        dlq_id: "no dlq_source_stream field and no target given: pass target= to replay it"
    }
    assert r.xlen(streams_client.dlq_stream(stream_name)) == 1
    report = replay_dlq(streams_client, stream_name, target=stream_name)
    assert report.replayed == [dlq_id]


def test_wrong_type_target_fails_and_keeps_the_entry(
    streams_client: Client, stream_name: str
) -> None:
    r = streams_client.redis
    dlq = streams_client.dlq_stream(stream_name)
    [dlq_id] = fill_dlq(r, dlq, [dlq_fields(0, stream_name)])
    r.set(stream_name, "not a stream")
    report = replay_dlq(streams_client, stream_name)
    assert report.failed == {dlq_id: f"target {stream_name!r} is a string, not a stream"}
    assert r.xlen(dlq) == 1


def test_for_group_override_and_plain_redis_client(
    redis_client: redis.Redis, stream_name: str
) -> None:
    dlq = stream_name + "_dlq"
    fill_dlq(
        redis_client, dlq, [dlq_fields(i, stream_name, group="failed-group") for i in range(2)]
    )
    replay_dlq(redis_client, stream_name, limit=1, for_group="other")
    replay_dlq(redis_client, stream_name, for_group=None)
    [(_, first), (_, second)] = written(redis_client, stream_name)
    assert first[b"streamlab:replay_group"] == b"other"
    assert second[b"streamlab:replay_group"] == b""  # every group
    forever = replay_dlq(redis_client, stream_name, ledger_ttl=None)
    assert forever.replayed == []


def test_rejects_bad_arguments(streams_client: Client, stream_name: str) -> None:
    sel = select_dlq(streams_client, stream_name)
    assert len(sel) == 0
    with pytest.raises(TypeError, match="tenant"):
        replay_dlq(streams_client, stream_name, tenant="x")
    with pytest.raises(ArgumentError, match="not both"):
        replay_dlq(streams_client, stream_name, sel, tenant_id="x")
    with pytest.raises(ArgumentError, match="has DLQ"):
        replay_dlq(streams_client, stream_name + "x", sel)
    with pytest.raises(ArgumentError, match="rate"):
        replay_dlq(streams_client, stream_name, rate=0)
    with pytest.raises(TypeError, match="RedisStreamsClient"):
        select_dlq(object(), stream_name)  # type: ignore[arg-type]


def test_every_argument_is_checked_before_anything_is_read_or_written(
    streams_client: Client, stream_name: str
) -> None:
    r = streams_client.redis
    dlq = streams_client.dlq_stream(stream_name)
    ids = fill_dlq(r, dlq, [dlq_fields(i, stream_name) for i in range(3)])
    bad: list[tuple[dict[str, Any], str]] = [
        ({"limit": 2.5}, "limit: expected an int >= 0, got 2.5"),
        ({"limit": "3"}, "limit: expected an int"),
        ({"batch_size": 0}, "batch_size: must be >= 1"),
        ({"batch_size": "3"}, "batch_size: expected an int >= 1"),
        ({"batch_size": True}, "batch_size: expected an int"),
        ({"rate": "5"}, "rate: expected a finite number > 0"),
        ({"rate": float("inf")}, "rate: expected a finite number"),
        ({"rate": float("nan")}, "rate: expected a finite number"),
        ({"rate": -1}, "rate: must be > 0"),
        ({"ledger_ttl": -5}, "ledger_ttl: duration -5 is negative"),
        ({"ledger_ttl": "soon"}, "ledger_ttl: invalid duration 'soon'"),
        ({"ledger_ttl": 0}, "ledger_ttl: must be at least 1 s"),
        ({"ledger_ttl": True}, "ledger_ttl: invalid duration True"),
        ({"for_group": 5}, "for_group: expected a non-empty name"),
        ({"target": 5}, "target: expected a non-empty name"),
        ({"dlq": 5}, "dlq: expected a non-empty name"),
        ({"replay_id": 5}, "replay_id: 1 to 128 of the characters"),
        ({"replay_id": "a b"}, "replay_id: 1 to 128 of the characters"),
        ({"cancel": 5}, "cancel: expected a threading.Event"),
        ({"selection": ids}, "selection: expected a ReplaySelection"),
        ({"since": datetime(2026, 1, 1)}, "since: .* has no time zone"),
    ]
    for kwargs, message in bad:
        for dry_run in (False, True):
            with pytest.raises(ArgumentError, match=rf"^{message}"):
                replay_dlq(streams_client, stream_name, dry_run=dry_run, **kwargs)
    # Nothing was written: every entry is still in the DLQ, nothing reached the stream.
    assert [i.decode() for i, _ in r.xrange(dlq)] == ids
    assert r.xlen(stream_name) == 0
    assert r.keys(f"{dlq}:*") == []
    with pytest.raises(ArgumentError, match=r"^limit: expected an int >= 0, got 2.5"):
        select_dlq(streams_client, stream_name, limit=2.5)
    with pytest.raises(ArgumentError, match=r"^filters: expected a DLQFilter"):
        select_dlq(streams_client, stream_name, "KeyError")
    with pytest.raises(ArgumentError, match=r"^stream: expected a non-empty name"):
        select_dlq(streams_client, None)


def test_ledger_ttl_takes_any_duration(streams_client: Client, stream_name: str) -> None:
    r = streams_client.redis
    dlq = streams_client.dlq_stream(stream_name)
    fill_dlq(r, dlq, [dlq_fields(i, stream_name) for i in range(4)])
    for ttl, seconds in (("2h", 7200), ("PT30M", 1800), (timedelta(seconds=1.5), 2), (90, 90)):
        report = replay_dlq(streams_client, stream_name, limit=1, ledger_ttl=ttl)
        assert len(report.replayed) == 1
        assert seconds - 5 <= r.ttl(ledger_key(dlq, report.replay_id)) <= seconds


def test_report_outcome_of_an_id_it_never_held_is_not_found(
    streams_client: Client, stream_name: str
) -> None:
    r = streams_client.redis
    ids = fill_dlq(
        r, streams_client.dlq_stream(stream_name), [dlq_fields(i, stream_name) for i in range(3)]
    )
    report = replay_dlq(streams_client, stream_name, limit=2)
    assert [report.outcome(i) for i in ids[:2]] == ["replayed", "replayed"]
    assert report.outcome(ids[0].encode()) == "replayed"  # as redis-py returns ids
    # ids[2] exists, in the DLQ, but this run never selected it: it was "remaining".
    for absent in (ids[2], "1-1"):
        with pytest.raises(NotFoundError, match=rf"^DLQ entry {absent} is not in replay"):
            report.outcome(absent)
    for malformed in ("zzz", 5, None):
        with pytest.raises(ArgumentError, match=r"^dlq_id: "):
            report.outcome(malformed)
    cancel = threading.Event()
    cancel.set()
    stopped = replay_dlq(streams_client, stream_name, cancel=cancel)
    assert stopped.outcome(ids[2]) == "remaining"
    # replay_outcome and try_handler check theirs the same way.
    for replay_id in (5, "a b", ""):
        with pytest.raises(ArgumentError, match=r"^replay_id: "):
            replay_outcome(streams_client, stream_name, replay_id)
    for targets, match in (("abc", r"^targets: expected a list"), ([5], r"^targets: expected a")):
        with pytest.raises(ArgumentError, match=match):
            replay_outcome(streams_client, stream_name, report.replay_id, targets=targets)
    with pytest.raises(ArgumentError, match=r"^dlq: "):
        replay_outcome(streams_client, stream_name, report.replay_id, dlq=5)
    selection = select_dlq(streams_client, stream_name)
    with pytest.raises(ArgumentError, match=r"^handler: expected a function"):
        try_handler(5, selection)
    with pytest.raises(ArgumentError, match=r"^selection: expected a ReplaySelection"):
        try_handler(lambda msg: None, ids)


def test_cluster_slots_checked_before_writing(
    streams_client: Client, stream_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import streamlab.replay.run

    fill_dlq(
        streams_client.redis, streams_client.dlq_stream(stream_name), [dlq_fields(0, stream_name)]
    )
    monkeypatch.setattr(streamlab.replay.run, "is_cluster", lambda _: True)
    with pytest.raises(ConfigError, match="cluster slots"):
        replay_dlq(streams_client, stream_name, target="untagged-target")
    assert not streams_client.redis.exists("untagged-target")
    assert len(replay_dlq(streams_client, stream_name).replayed) == 1  # hash-tagged: fine


def test_replay_outcome_states(streams_client: Client, stream_name: str) -> None:
    r = streams_client.redis
    streams_client.ensure_group(stream_name, "g", "$")
    streams_client.ensure_group(stream_name, "other", "$")
    ids = fill_dlq(
        r, streams_client.dlq_stream(stream_name), [dlq_fields(i, stream_name) for i in range(5)]
    )
    report = replay_dlq(streams_client, stream_name)
    new = [report.mapping[i] for i in ids]
    got = streams_client.read_from_stream(stream_name, "g", "c1", 3)
    assert [m.id for m in got] == new[:3]
    streams_client.ack_message(stream_name, "g", new[0])
    # new[1] fails again and is dead-lettered; new[2] stays pending; new[3:] never read.
    failed = dict(got[1].fields)
    failed.update(
        Failure(error="still broken", error_type="KeyError", source_stream=stream_name,
                source_id=new[1], group="g").to_fields()
    )  # fmt: skip
    r.xadd(streams_client.dlq_stream(stream_name), failed)
    r.xack(stream_name, "g", new[1])
    r.xdel(stream_name, new[4])
    frame = replay_outcome(streams_client, stream_name, report.replay_id)
    assert frame["group"].tolist() == ["g"] * 5  # replay_group: "other" is not concerned
    assert frame["state"].tolist() == ["acked", "dead_lettered", "pending", "waiting", "gone"]
    assert frame.loc[1, "error_type"] == "KeyError"
    assert frame.loc[1, "error"] == "still broken"
    assert frame.loc[2, "consumer"] == "c1"
    assert frame.loc[2, "deliveries"] == 1
    assert frame["id"].tolist() == ids
    # After the ledger expired, the source stream is scanned for the run's marker.
    r.delete(ledger_key(streams_client.dlq_stream(stream_name), report.replay_id))
    scanned = replay_outcome(streams_client, stream_name, report.replay_id)
    assert scanned["state"].tolist()[:4] == ["acked", "dead_lettered", "pending", "waiting"]
    with pytest.raises(NotFoundError, match="no replay run 'no-such-run' of DLQ") as caught:
        replay_outcome(streams_client, stream_name, "no-such-run")
    assert isinstance(caught.value, KeyError)


def test_try_handler_writes_nothing(streams_client: Client, stream_name: str) -> None:
    r = streams_client.redis
    dlq = streams_client.dlq_stream(stream_name)
    bad = dlq_fields(9, stream_name, error_type="DecodeError")
    bad["payload"] = "{oops"
    ids = fill_dlq(r, dlq, [dlq_fields(i, stream_name) for i in range(3)] + [bad])
    seen: list[StreamMessage] = []

    def handler(msg: StreamMessage) -> None:
        seen.append(msg)
        assert msg.event is not None
        if msg.event.payload["n"] == 1:
            raise KeyError("still broken")

    before = r.xrange(dlq)
    frame = try_handler(handler, select_dlq(streams_client, stream_name))
    assert r.xrange(dlq) == before
    assert not r.exists(stream_name)
    assert frame["id"].tolist() == ids
    assert frame["outcome"].tolist() == ["ok", "error", "ok", "error"]
    assert frame["error_type"].tolist()[1::2] == ["KeyError", "DecodeError"]
    assert "still broken" in frame.loc[1, "error"]
    assert str(frame["duration"].dtype).startswith("timedelta64")
    assert [m.id for m in seen] == ids[:3]
    assert all(m.event is not None and m.event.retry_count == 0 for m in seen)
    assert all(m.failure is None and m.stream == stream_name for m in seen)


def test_selection_and_report_render(streams_client: Client, stream_name: str) -> None:
    ids, _ = mixed_dlq(streams_client, stream_name)
    sel = select_dlq(streams_client, stream_name, error_type=["TimeoutError", "KeyError"])
    text = repr(sel)
    assert "12 entries" in text
    assert "error_type: TimeoutError 9, KeyError 3" in text
    assert sel.summary()["event_type"] == {
        "webhook.github.push": 4,
        "webhook.github.issues": 4,
        "other": 4,
    }
    frame = sel.to_dataframe()
    assert frame["id"].tolist() == ids
    assert str(frame["ts"].dtype) == "datetime64[ms, UTC]"
    assert frame["attempts"].tolist() == [4] * 12
    assert frame["tenant_id"].tolist()[:2] == ["tenant-0", "tenant-1"]
    page = sel._repr_html_()
    assert "<table" in page
    assert "selected by: <code>error_type=KeyError|TimeoutError</code>" in page  # the filter
    assert "selected by: error_type=KeyError|TimeoutError" in text
    report = replay_dlq(streams_client, stream_name, sel, dry_run=True)
    assert isinstance(report, ReplayReport)
    assert "DRY RUN" in str(report)
    # The repr is the one-line summary: the id lists would print one item per event.
    assert repr(report) == f"<ReplayReport: {report}>"
    assert "12 selected, 12 would replay" in repr(report)
    assert not any(dlq_id in repr(report) for dlq_id in ids)
    rows = report.to_dataframe()
    assert rows["outcome"].tolist() == ["replayed"] * 12
    assert rows["new_id"].isna().all()
    # Twelve identical rows fold into one: "would replay" to the source stream, the ids folded.
    groups = report.groups()
    assert groups[["outcome", "target", "count"]].values.tolist() == [
        ["would replay", stream_name, 12]
    ]
    assert groups["reason"].isna().all()  # a missing reason is NA, not ''
    assert groups["ids"][0] == ids
    page = report._repr_html_()
    assert page.count("<tr>") == 2  # the header and one group
    assert "would replay" in page
    assert "<summary>12 DLQ ids</summary>" in page
    assert "None" not in page
    assert "nan" not in page.casefold()


def test_progress_bar_and_missing_tqdm(
    streams_client: Client,
    stream_name: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import tqdm.auto

    fill_dlq(
        streams_client.redis,
        streams_client.dlq_stream(stream_name),
        [dlq_fields(i, stream_name) for i in range(37)],
    )
    # The real bar, drawn on every update rather than at most every 0.1 s.
    monkeypatch.setattr(tqdm.auto, "tqdm", functools.partial(tqdm.auto.tqdm, mininterval=0))
    assert len(replay_dlq(streams_client, stream_name, dry_run=True, progress=True).replayed) == 37
    bar = capsys.readouterr().err
    assert "dry run:" in bar
    assert "37/37" in bar  # tqdm's "done/total"
    assert "dry run: 37 events in" in bar  # the line left once the bar is gone
    report = replay_dlq(streams_client, stream_name, limit=36, progress=True, batch_size=12)
    assert len(report.replayed) == 36
    bar = capsys.readouterr().err
    assert "replay:" in bar
    assert all(f"{n}/36" in bar for n in (12, 24, 36))  # one step per batch
    assert bar.rstrip().splitlines()[-1].startswith("replay: 36 events in ")
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(MissingDependencyError, match=r"streamlab\[notebook\]"):
        replay_dlq(streams_client, stream_name, progress=True)
    assert replay_dlq(streams_client, stream_name, progress=None).replayed  # quietly without


def test_import_stays_light() -> None:
    code = "import sys, streamlab.replay; print('pandas' in sys.modules, 'tqdm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_ids_from_a_filtered_dlq_frame(streams_client: Client, stream_name: str) -> None:
    from streamlab.frames import dlq_to_dataframe

    ids, entries = mixed_dlq(streams_client, stream_name)
    df = dlq_to_dataframe(streams_client, stream_name)
    keyerrors = df.loc[df["error_type"] == "KeyError", "id"]
    sel = select_dlq(streams_client, stream_name, ids=keyerrors)
    assert sel.ids == expect(ids, entries, lambda e: e["dlq_error_type"] == "KeyError")
    assert select_dlq(streams_client, stream_name, ids=df.set_index("id").index).ids == ids


def test_platform_format_entries_filter_and_replay(
    streams_client: Client, stream_name: str
) -> None:
    from streamlab.events import decode_event
    from streamlab.samples import platform_entries

    r = streams_client.redis
    raw = list(platform_entries(30, seed=3))
    failure = Failure(error="boom", error_type="E", source_stream=stream_name, group="g")
    ids = fill_dlq(
        r, streams_client.dlq_stream(stream_name), [e | failure.to_fields() for e in raw]
    )
    events = [decode_event(e) for e in raw]
    tenant, repo = events[0].tenant_id, events[0].repository
    sel = select_dlq(streams_client, stream_name, tenant_id=tenant, repository=repo)
    assert sel.ids == [
        i
        for i, ev in zip(ids, events, strict=True)
        if (ev.tenant_id, ev.repository) == (tenant, repo)
    ]
    report = replay_dlq(streams_client, stream_name, sel)
    for (_, out), dlq_id in zip(written(r, stream_name), sel.ids, strict=True):
        original = raw[ids.index(dlq_id)]
        assert {k: out[k.encode()] for k in original} == {
            k: v.encode() for k, v in original.items()
        }
        assert out[b"retry_count"] == b"0"
    assert len(report.replayed) == len(sel)


def test_scripts_flushed_before_and_between_batches(private_server: EmbeddedServer) -> None:
    """The server forgetting the replay script (SCRIPT FLUSH, a restart without the script
    cache) costs nothing: the calls refused with NOSCRIPT did not run, the script is loaded
    and they are sent again, each entry replayed exactly once. A private server: the test
    flushes its scripts."""
    r = private_server.client()
    client = RedisStreamsClient(r)
    ids = fill_dlq(r, client.dlq_stream("s"), [dlq_fields(i, "s") for i in range(10)])

    class FlushingScripts(threading.Event):
        def is_set(self) -> bool:  # asked before each batch
            r.script_flush()
            return False

    r.config_resetstat()
    report = replay_dlq(client, "s", batch_size=3, cancel=FlushingScripts())
    # Every call of every batch was refused once (NOSCRIPT), then sent again.
    assert r.info("commandstats")["cmdstat_evalsha"]["failed_calls"] == 10
    assert report.replayed == ids
    assert report.ok
    assert not report.failed
    assert r.xlen("s") == 10
    assert r.xlen(client.dlq_stream("s")) == 0
    sources = [f[b"streamlab:replay_of"] for _, f in r.xrange("s")]
    assert sorted(sources) == sorted(i.encode() for i in ids)
    r.close()
