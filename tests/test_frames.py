"""DataFrame exporters against a real server: streamlab events, platform entries, one JSON
field per entry, binary and invalid values, pending lists, the DLQ and Parquet."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import redis

from streamlab.client import RedisStreamsClient
from streamlab.errors import (
    ArgumentError,
    ConfigError,
    GroupNotFoundError,
    MissingDependencyError,
    WrongTypeError,
)
from streamlab.events import decode_event, encode_event
from streamlab.frames import (
    PENDING_STATES,
    bucket_for,
    consumers_to_dataframe,
    dlq_summary,
    dlq_to_dataframe,
    export_parquet,
    failures_over_time,
    groups_to_dataframe,
    pending_to_dataframe,
    plot_failures,
    read_parquet,
    stream_to_dataframe,
)
from streamlab.frames._build import DLQ_FRAME_RENAMES, column_names, entry_fields
from streamlab.frames.pending import _pending_columns
from streamlab.records import Failure
from streamlab.samples import platform_entries, sample_events

BASE = [
    "id", "ts", "event_id", "event_type", "repository", "tenant_id", "timestamp",
    "retry_count", "payload", "auth_context", "_decode_error", "_raw",
]  # fmt: skip
BASE_DTYPES = {
    "id": "str",
    "ts": "datetime64[ms, UTC]",
    "event_id": "str",
    "event_type": "category",
    "repository": "category",
    "tenant_id": "category",
    "timestamp": "datetime64[ms, UTC]",
    "retry_count": "Int64",
    "payload": "str",
    "auth_context": "str",
    "_decode_error": "str",
    "_raw": "object",
}


def dtypes(df: pd.DataFrame) -> dict[str, str]:
    return {name: str(dtype) for name, dtype in df.dtypes.items()}


def raw_ids(r: redis.Redis, stream: str) -> list[str]:
    return [eid.decode() for eid, _ in r.xrange(stream)]


# -- streams -----------------------------------------------------------------------------------


def test_streamlab_events_typed_over_several_pages(
    streams_client: RedisStreamsClient, redis_client: redis.Redis, stream_name: str
) -> None:
    events = list(sample_events(57, seed=3))
    streams_client.add_many(stream_name, events)
    df = stream_to_dataframe(streams_client, stream_name, page_size=10)

    assert list(df.columns) == BASE
    assert dtypes(df) == BASE_DTYPES
    ids = raw_ids(redis_client, stream_name)
    assert df["id"].tolist() == ids
    assert df["ts"].tolist() == [
        pd.Timestamp(int(i.split("-")[0]), unit="ms", tz="UTC") for i in ids
    ]
    assert df["event_id"].tolist() == [e.id for e in events]
    assert df["event_type"].astype(str).tolist() == [e.event_type for e in events]
    assert df["tenant_id"].astype(str).tolist() == [e.tenant_id for e in events]
    assert df["timestamp"].tolist() == [pd.Timestamp(e.timestamp).floor("ms") for e in events]
    assert df["retry_count"].tolist() == [0] * 57
    assert [json.loads(p) for p in df["payload"]] == [e.payload for e in events]
    assert df["_decode_error"].isna().all()
    assert df["_raw"].isna().all()


def test_categories_sorted_with_each_row_keeping_its_value(
    redis_client: redis.Redis, stream_name: str
) -> None:
    # Written out of order, one missing, non-ASCII among them, over several pages: the
    # categories come sorted as Python sorts the strings and each row keeps its own value.
    types = ["push", "zeta", "émoji", "issues", None, "Push", "push", "ärger"] * 4
    for t in types:
        redis_client.xadd(stream_name, {"payload": "{}", **({"event_type": t} if t else {})})
    df = stream_to_dataframe(redis_client, stream_name, page_size=3)
    assert list(df["event_type"].cat.categories) == sorted({t for t in types if t})
    assert [None if pd.isna(v) else v for v in df["event_type"]] == types


def test_plain_redis_client_and_bounds(
    streams_client: RedisStreamsClient, redis_client: redis.Redis, stream_name: str
) -> None:
    streams_client.add_many(stream_name, sample_events(30))
    ids = raw_ids(redis_client, stream_name)
    full = stream_to_dataframe(redis_client, stream_name)
    assert full["id"].tolist() == ids

    part = stream_to_dataframe(redis_client, stream_name, since=ids[5], until=ids[20], limit=7)
    assert part["id"].tolist() == ids[5:12]
    first_ms = int(ids[0].split("-")[0])
    by_time = stream_to_dataframe(
        redis_client, stream_name, since=datetime.fromtimestamp(first_ms / 1000, UTC)
    )
    assert by_time["id"].tolist() == ids
    # since/until take what select_dlq and replay_dlq take: ms, timedelta, RFC 3339 text.
    assert len(stream_to_dataframe(redis_client, stream_name, since=first_ms)) == 30
    assert len(stream_to_dataframe(redis_client, stream_name, until=first_ms - 1)) == 0
    assert len(stream_to_dataframe(redis_client, stream_name, since=timedelta(days=1))) == 30
    # "That long ago" before the year 1 is before every entry, not an OverflowError.
    assert len(stream_to_dataframe(redis_client, stream_name, since=timedelta.max)) == 30
    assert len(stream_to_dataframe(redis_client, stream_name, since="2999-01-01T00:00Z")) == 0
    assert len(stream_to_dataframe(redis_client, stream_name, limit=0)) == 0
    with pytest.raises(ArgumentError, match=r"until: .* has no time zone"):
        stream_to_dataframe(redis_client, stream_name, until=datetime(2026, 1, 1))
    with pytest.raises(ArgumentError, match="limit"):
        stream_to_dataframe(redis_client, stream_name, limit=-1)


def test_bad_page_sizes_limits_and_names_are_refused_before_reading(
    streams_client: RedisStreamsClient, stream_name: str, tmp_path: Path
) -> None:
    streams_client.add_many(stream_name, sample_events(65))
    streams_client.ensure_group(stream_name, "g")
    streams_client.redis.xreadgroup("g", "w", {stream_name: ">"}, count=5)
    path = tmp_path / "out.parquet"
    # A page size or chunk of 0 read nothing and said so by an empty frame, or 0 rows written.
    for size in (0, -1, True, 2.5, "10", None):
        with pytest.raises(ArgumentError, match=r"^page_size: "):
            stream_to_dataframe(streams_client, stream_name, page_size=size)
        with pytest.raises(ArgumentError, match=r"^page_size: "):
            pending_to_dataframe(streams_client, stream_name, "g", page_size=size)
        with pytest.raises(ArgumentError, match=r"^chunk_rows: "):
            export_parquet(streams_client, stream_name, path, chunk_rows=size)
    assert not path.exists()
    assert len(stream_to_dataframe(streams_client, stream_name, page_size=1)) == 65
    assert export_parquet(streams_client, stream_name, path, chunk_rows=1) == 65
    assert len(read_parquet(path)) == 65
    # limit: the same check (an int >= 0) wherever a range is read.
    for limit in ("3", 2.5, -1, True):
        for read in (stream_to_dataframe, dlq_to_dataframe):
            with pytest.raises(ArgumentError, match=r"^limit: "):
                read(streams_client, stream_name, limit=limit)
        with pytest.raises(ArgumentError, match=r"^limit: "):
            export_parquet(streams_client, stream_name, path, limit=limit)
        with pytest.raises(ArgumentError, match=r"^limit: "):
            pending_to_dataframe(streams_client, stream_name, "g", limit=limit)
    # Names: redis-py sent 5 as '5' and refused None with its own DataError.
    for name in (5, True, ""):
        with pytest.raises(ArgumentError, match=r"^stream: expected a non-empty name"):
            stream_to_dataframe(streams_client, name)
        with pytest.raises(ArgumentError, match=r"^stream: "):
            groups_to_dataframe(streams_client, name)
        with pytest.raises(ArgumentError, match=r"^group: "):
            consumers_to_dataframe(streams_client, stream_name, name)
        with pytest.raises(ArgumentError, match=r"^dlq: "):
            dlq_to_dataframe(streams_client, stream_name, dlq=name)
    with pytest.raises(ArgumentError, match=r"^consumer: "):
        pending_to_dataframe(streams_client, stream_name, "g", consumer=5)
    # payload_fields: a list of paths; a str was read as one path per character.
    for fields, match in (
        ("ref", "expected a list of paths"),
        ([5], "expected str paths"),
        (["a..b"], "invalid JSON path"),
        (3, "expected a list of paths"),
    ):
        with pytest.raises(ArgumentError, match=rf"^payload_fields: {match}"):
            stream_to_dataframe(streams_client, stream_name, payload_fields=fields)
    with pytest.raises(ArgumentError, match=r"^compression: expected a Parquet codec"):
        export_parquet(streams_client, stream_name, path, compression="zip")
    with pytest.raises(ArgumentError, match=r"^ids: expected a list of entry ids"):
        export_parquet(streams_client, stream_name, path, ids=5)
    foreign = tmp_path / "foreign.parquet"
    pd.DataFrame({"a": [1]}).to_parquet(foreign)
    with pytest.raises(ArgumentError, match="was not written by export_parquet"):
        read_parquet(foreign)


def test_payload_fields_extract_json_paths(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    events = list(sample_events(40, seed=1))
    streams_client.add_many(stream_name, events)
    df = stream_to_dataframe(
        streams_client,
        stream_name,
        payload_fields=["ref", "sender.login", "installation.id", "missing.path"],
        page_size=16,
    )
    refs = [None if pd.isna(v) else v for v in df["payload.ref"]]
    assert refs == [e.payload.get("ref") for e in events]
    assert df["payload.sender.login"].tolist() == [e.payload["sender"]["login"] for e in events]
    assert str(df["payload.sender.login"].dtype) == "str"
    assert df["payload.installation.id"].tolist() == [
        e.payload["installation"]["id"] for e in events
    ]
    assert str(df["payload.installation.id"].dtype) == "Int64"
    assert df["payload.missing.path"].isna().all()
    pushes = df[df["event_type"] == "webhook.github.push"]
    assert pushes["payload.ref"].str.startswith("refs/heads/").all()


def test_platform_entries_normalised(streams_client: RedisStreamsClient, stream_name: str) -> None:
    entries = list(platform_entries(12, seed=2))
    streams_client.add_many(stream_name, entries)
    df = stream_to_dataframe(streams_client, stream_name, payload_fields=["metadata:source"])

    assert list(df.columns) == [
        *BASE[:-2],
        "sender_name",
        "metadata",
        "metadata.source",
        *BASE[-2:],
    ]
    assert df["event_id"].tolist() == [e["event_id"] for e in entries]
    assert df["repository"].astype(str).tolist() == [e["repo_name"] for e in entries]
    assert df["tenant_id"].astype(str).tolist() == [
        json.loads(e["auth_context"])["tenant_id"] for e in entries
    ]
    assert str(df["sender_name"].dtype) == "category"
    assert df["metadata"].tolist() == [e["metadata"] for e in entries]
    assert (df["metadata.source"] == "github").all()
    assert df["timestamp"].tolist() == [pd.Timestamp(e["timestamp"]).floor("ms") for e in entries]
    assert df["retry_count"].isna().all()


def test_single_json_field_entries(redis_client: redis.Redis, stream_name: str) -> None:
    docs = [{"action": "opened", "number": i, "sender": {"login": f"u{i}"}} for i in range(5)]
    for doc in docs:
        redis_client.xadd(stream_name, {"data": json.dumps(doc)})
    df = stream_to_dataframe(redis_client, stream_name, payload_fields=["sender.login", "number"])
    assert df["data"].tolist() == [json.dumps(d) for d in docs]
    assert df["payload.sender.login"].tolist() == [f"u{i}" for i in range(5)]
    assert df["payload.number"].tolist() == list(range(5))
    assert df["event_type"].isna().all()
    explicit = stream_to_dataframe(redis_client, stream_name, payload_fields=["data:action"])
    assert (explicit["data.action"] == "opened").all()


def test_binary_and_invalid_values_kept_and_flagged(
    redis_client: redis.Redis, stream_name: str
) -> None:
    good = encode_event(next(sample_events(1)))
    redis_client.xadd(stream_name, good)
    redis_client.xadd(stream_name, {**good, "payload": b"\xff\xfe{not json", "blob": b"\x00\x81"})
    redis_client.xadd(stream_name, {**good, "timestamp": "yesterday", "retry_count": "two"})
    redis_client.xadd(stream_name, {**good, "payload": "{truncated"})
    df = stream_to_dataframe(redis_client, stream_name, payload_fields=["sender.login"])

    assert len(df) == 4
    assert pd.isna(df["_decode_error"][0])
    assert df["payload.sender.login"][0] == json.loads(good["payload"])["sender"]["login"]

    assert "payload: not UTF-8" in df["_decode_error"][1]
    assert "blob: not UTF-8" in df["_decode_error"][1]
    assert df["_raw"][1]["payload"] == b"\xff\xfe{not json"
    assert df["_raw"][1]["blob"] == b"\x00\x81"
    assert df["payload"][1] == "\\xff\\xfe{not json"
    assert pd.isna(df["blob"][0])

    assert "timestamp: not an RFC 3339 time" in df["_decode_error"][2]
    assert "retry_count: not an integer" in df["_decode_error"][2]
    assert df["_raw"][2] == {"timestamp": b"yesterday", "retry_count": b"two"}
    assert pd.isna(df["timestamp"][2])
    assert pd.isna(df["retry_count"][2])
    assert df["timestamp"][0] == pd.Timestamp(good["timestamp"]).floor("ms")

    assert "payload: invalid JSON" in df["_decode_error"][3]
    assert df["_raw"][3] == {"payload": b"{truncated"}
    assert pd.isna(df["payload.sender.login"][3])
    assert str(df["timestamp"].dtype) == "datetime64[ms, UTC]"
    assert str(df["retry_count"].dtype) == "Int64"


def test_mixed_fields_and_name_collisions(redis_client: redis.Redis, stream_name: str) -> None:
    redis_client.xadd(stream_name, {"event_type": "a", "color": "red"})
    redis_client.xadd(stream_name, {"event_id": "e-1", "id": "other", "ts": "x"})
    redis_client.execute_command("XADD", stream_name, "*", "k", "1", "k", "2")
    df = stream_to_dataframe(redis_client, stream_name)
    assert df["event_type"][0] == "a"
    assert pd.isna(df["event_type"][1])
    assert df["color"].tolist()[0] == "red"
    assert pd.isna(df["color"][1])
    # streamlab's own `id` wins over the alias `event_id`, as decode_event reads it.
    assert df["event_id"][1] == "other"
    assert df["event_id_field"][1] == "e-1"
    assert "id_field" not in df.columns
    assert df["ts_field"][1] == "x"
    assert (df["k"][2], df["k_field"][2]) == ("1", "2")


def test_a_page_of_one_layout_with_own_names_and_aliases_reads_as_decode_event_does(
    redis_client: redis.Redis, stream_name: str
) -> None:
    # One layout for the whole page (the transposed, vectorised path), aliases first.
    for i in range(50):
        redis_client.xadd(
            stream_name,
            {
                "event_type": "t",
                "event_id": f"alias-{i}",
                "repo_name": "alias/repo",
                "tenant": "alias-tenant",
                "id": f"own-{i}",
                "repository": "own/repo",
                "tenant_id": "" if i % 2 else "own-tenant",
                "auth_context": json.dumps({"tenant_id": "auth-tenant"}),
            },
        )
    df = stream_to_dataframe(redis_client, stream_name)
    events = [decode_event(f, entry_id=i.decode()) for i, f in redis_client.xrange(stream_name)]
    assert df["event_id"].tolist() == [e.id for e in events]
    assert df["repository"].astype(str).tolist() == [e.repository for e in events]
    assert df["tenant_id"].astype(str).tolist() == [e.tenant_id for e in events]
    assert set(df["tenant_id"]) == {"own-tenant", "auth-tenant"}
    # The aliases keep their own names, as in the events' extra.
    assert df["event_id_field"].tolist() == [e.extra["event_id"] for e in events]
    assert df["repo_name"].tolist() == [e.extra["repo_name"] for e in events]
    assert df["tenant"].tolist() == [e.extra["tenant"] for e in events]
    assert not {"id_field", "repository_field", "tenant_id_field"} & set(df.columns)


def test_decode_responses_client_refused(redis_url: str, stream_name: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        with pytest.raises(ConfigError, match="decode_responses"):
            stream_to_dataframe(client, stream_name)
    finally:
        client.close()


def test_missing_stream_and_wrong_type(
    redis_client: redis.Redis, stream_name: str, tmp_path: Path
) -> None:
    empty = stream_to_dataframe(redis_client, stream_name)
    assert empty.empty
    assert dtypes(empty) == BASE_DTYPES
    assert list(dlq_to_dataframe(redis_client, stream_name).columns)[:7] == [
        "id", "ts", "failed_at", "event_type", "tenant_id", "repository", "error_signature",
    ]  # fmt: skip
    redis_client.set(stream_name, "not a stream")
    with pytest.raises(WrongTypeError, match="not a stream"):
        stream_to_dataframe(redis_client, stream_name)
    with pytest.raises(WrongTypeError):
        groups_to_dataframe(redis_client, stream_name)
    with pytest.raises(WrongTypeError):
        pending_to_dataframe(redis_client, stream_name, "g")
    with pytest.raises(WrongTypeError):
        consumers_to_dataframe(redis_client, stream_name, "g")
    with pytest.raises(WrongTypeError):
        export_parquet(redis_client, stream_name, tmp_path / "x.parquet")
    redis_client.set(f"{stream_name}_dlq", "not a stream either")
    with pytest.raises(WrongTypeError):
        dlq_to_dataframe(redis_client, stream_name)


# -- pending, groups, consumers ------------------------------------------------------------------


def _pending_setup(client: RedisStreamsClient, stream: str) -> list[str]:
    r = client.redis
    client.add_many(stream, sample_events(40))
    client.ensure_group(stream, "g")
    r.xreadgroup("g", "w1", {stream: ">"}, count=15)
    r.xreadgroup("g", "w2", {stream: ">"}, count=10)
    ids = raw_ids(r, stream)
    r.xdel(stream, ids[2], ids[20])  # deleted while pending
    r.xclaim(stream, "g", "streamlab:retry", 0, [ids[4]], justid=True)
    for _ in range(4):  # delivered 5 times: poison
        r.xclaim(stream, "g", "w2", 0, [ids[17]])
    return ids


def test_pending_rows_match_xpending(
    streams_client: RedisStreamsClient, redis_client: redis.Redis, stream_name: str
) -> None:
    ids = _pending_setup(streams_client, stream_name)
    expected = redis_client.xpending_range(stream_name, "g", "-", "+", 1000)
    df = pending_to_dataframe(streams_client, stream_name, "g", page_size=6)

    assert df["id"].tolist() == [row["message_id"].decode() for row in expected]
    assert df["consumer"].astype(str).tolist() == [row["consumer"].decode() for row in expected]
    assert df["deliveries"].tolist() == [row["times_delivered"] for row in expected]
    assert (
        df["idle"] >= pd.to_timedelta([r["time_since_delivered"] for r in expected], "ms")
    ).all()
    assert dtypes(df) == {
        "id": "str",
        "ts": "datetime64[ms, UTC]",
        "consumer": "category",
        "state": "category",
        "deliveries": "Int64",
        "idle": "timedelta64[ms]",
        "consumer_idle": "timedelta64[ms]",
        "claimable": "bool",
        "retry_due_at": "datetime64[ms, UTC]",
        "deleted": "boolean",
        **{k: v for k, v in BASE_DTYPES.items() if k not in ("id", "ts")},
    }
    assert list(df["state"].cat.categories) == list(PENDING_STATES)
    state = dict(zip(df["id"], df["state"].astype(str), strict=True))
    assert state[ids[2]] == state[ids[20]] == "trimmed"
    assert df.set_index("id").loc[ids[2], "deleted"]
    assert pd.isna(df.set_index("id").loc[ids[2], "event_type"])
    assert state[ids[4]] == "retry_wait"
    assert state[ids[17]] == "poison"
    assert {state[i] for i in ids[:25]} - {"trimmed", "retry_wait", "poison"} == {"in_flight"}
    assert df.set_index("id").loc[ids[0], "event_id"] == "evt-0-00000000"


def test_pending_filters_and_dead_consumer(
    streams_client: RedisStreamsClient, redis_client: redis.Redis, stream_name: str
) -> None:
    ids = _pending_setup(streams_client, stream_name)
    # w1 goes quiet for 1.5 s, w2 reads again: a second of margin either side of the 1 s bound,
    # however loaded the machine (consumer idle time cannot be set, only waited for).
    time.sleep(1.5)
    redis_client.xreadgroup("g", "w2", {stream_name: ">"}, count=1)  # w2 is alive
    df = pending_to_dataframe(redis_client, stream_name, "g", claim_min_idle=timedelta(seconds=1))
    w1 = df[df["consumer"] == "w1"]
    assert set(w1["state"].astype(str)) == {"dead_consumer", "trimmed"}
    assert (w1["consumer_idle"] >= pd.Timedelta(milliseconds=1500)).all()
    alive = df[(df["consumer"] == "w2") & (df["state"] == "in_flight")]
    assert len(alive) > 0
    assert df.set_index("id").loc[ids[0], "claimable"]

    only_w2 = pending_to_dataframe(redis_client, stream_name, "g", consumer="w2")
    assert set(only_w2["consumer"].astype(str)) == {"w2"}
    assert len(only_w2) == redis_client.xpending(stream_name, "g")["consumers"][-1]["pending"]
    assert pending_to_dataframe(redis_client, stream_name, "g", min_idle=3600).empty
    # min_idle keeps exactly what XPENDING's IDLE filter keeps (w2's fresh read is left out).
    idle = pending_to_dataframe(redis_client, stream_name, "g", min_idle=1.0)
    expected = redis_client.xpending_range(stream_name, "g", "-", "+", 1000, idle=1000)
    assert idle["id"].tolist() == [row["message_id"].decode() for row in expected]
    assert 0 < len(idle) < len(df)

    bare = pending_to_dataframe(redis_client, stream_name, "g", with_entries=False)
    assert bare["id"].tolist() == df["id"].tolist()
    assert bare["deleted"].isna().all()
    assert bare["event_type"].isna().all()


def test_pending_since_until_and_limit_bound_what_xpending_reads(
    streams_client: RedisStreamsClient, redis_client: redis.Redis, stream_name: str
) -> None:
    ids = _pending_setup(streams_client, stream_name)

    def pending(start: str = "-", end: str = "+", count: int = 1000, **kw: object) -> list[str]:
        rows = redis_client.xpending_range(stream_name, "g", start, end, count, **kw)
        return [row["message_id"].decode() for row in rows]

    def frame_ids(**kw: object) -> list[str]:
        df = pending_to_dataframe(streams_client, stream_name, "g", page_size=3, **kw)
        return df["id"].tolist()

    # The pending list is in id order: since / until bound it by entry id (so by time).
    assert frame_ids(since=ids[5], until=ids[12]) == pending(ids[5], ids[12]) == ids[5:13]
    assert frame_ids(limit=7) == pending(count=7)
    assert frame_ids(since=ids[3], limit=4) == pending(ids[3], count=4)
    assert frame_ids(consumer="w2", limit=3) == pending(count=3, consumername="w2")
    assert frame_ids(since=ids[30]) == []  # past the last pending entry
    first_ms = int(ids[0].split("-")[0])
    assert frame_ids(until=first_ms - 1) == []
    assert frame_ids(since=timedelta(days=1)) == pending()
    assert frame_ids(since=datetime.fromtimestamp(first_ms / 1000, UTC)) == pending()
    empty = pending_to_dataframe(streams_client, stream_name, "g", limit=0)
    assert empty.empty
    assert "state" in empty.columns
    assert pending_to_dataframe(streams_client, stream_name, "g", since=ids[9], until=ids[5]).empty
    with pytest.raises(ArgumentError, match=r"^since: .* has no time zone"):
        pending_to_dataframe(streams_client, stream_name, "g", since=datetime(2026, 1, 1))
    with pytest.raises(ArgumentError, match=r"^until: 'zzz' is neither"):
        pending_to_dataframe(streams_client, stream_name, "g", until="zzz")


def test_pending_min_idle_takes_any_duration_and_refuses_bad_ones(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    _pending_setup(streams_client, stream_name)
    everything = pending_to_dataframe(streams_client, stream_name, "g")
    for idle in ("0s", 0, timedelta(0), "PT0S"):
        df = pending_to_dataframe(streams_client, stream_name, "g", min_idle=idle)
        assert df["id"].tolist() == everything["id"].tolist()
    for idle in ("1h", 3600, timedelta(hours=1), "PT1H"):
        assert pending_to_dataframe(streams_client, stream_name, "g", min_idle=idle).empty
    # "abc" was multiplied by 1000 into 'abcabc...'; a negative one was let through.
    for idle, reason in (
        ("abc", "invalid duration 'abc'"),
        (-1, "duration -1 is negative"),
        (True, "invalid duration True"),
        (datetime(2026, 1, 1), "invalid duration"),
    ):
        with pytest.raises(ArgumentError, match=rf"^min_idle: {reason}"):
            pending_to_dataframe(streams_client, stream_name, "g", min_idle=idle)
        with pytest.raises(ArgumentError, match=rf"^claim_min_idle: {reason}"):
            pending_to_dataframe(streams_client, stream_name, "g", claim_min_idle=idle)
    for threshold in (-1, 2.5, "3", None):
        with pytest.raises(ArgumentError, match=r"^poison_threshold: "):
            pending_to_dataframe(streams_client, stream_name, "g", poison_threshold=threshold)


def test_dead_consumer_bound_is_inclusive_like_claimable() -> None:
    # A consumer idle for exactly claim_min_idle is dead, as an entry idle that long is
    # claimable (XPENDING's IDLE is inclusive). A strict bound made the README's
    # claim_min_idle=0 example flaky: within the millisecond of a read, the consumer idle is 0.
    meta = {"idle": [200, 199], "deliveries": [1, 1], "consumer": ["w1", "w2"], "deleted": [0, 0]}
    cols = _pending_columns(meta, {"w1": 200, "w2": 199}, 3, 200)
    assert cols["state"].astype(str).tolist() == ["dead_consumer", "in_flight"]
    assert cols["claimable"].tolist() == [True, False]
    zero = _pending_columns(meta, {"w1": 0, "w2": 0}, 3, 0)
    assert zero["state"].astype(str).tolist() == ["dead_consumer"] * 2


def test_missing_group(redis_client: redis.Redis, stream_name: str) -> None:
    with pytest.raises(GroupNotFoundError, match="'nope'"):
        pending_to_dataframe(redis_client, stream_name, "nope")
    with pytest.raises(GroupNotFoundError):
        consumers_to_dataframe(redis_client, stream_name, "nope")
    redis_client.xadd(stream_name, {"a": "1"})
    with pytest.raises(GroupNotFoundError):
        pending_to_dataframe(redis_client, stream_name, "nope")


def test_groups_and_consumers(
    streams_client: RedisStreamsClient, redis_client: redis.Redis, stream_name: str
) -> None:
    ids = _pending_setup(streams_client, stream_name)
    streams_client.ensure_group(stream_name, "idle-group", "$")
    groups = groups_to_dataframe(streams_client, stream_name)
    assert dtypes(groups) == {
        "group": "category",
        "consumers": "Int64",
        "pending": "Int64",
        "last_delivered_id": "str",
        "last_delivered": "datetime64[ms, UTC]",
        "entries_read": "Int64",
        "lag": "Int64",
    }
    g = groups.set_index("group").loc["g"]
    assert (g["consumers"], g["pending"]) == (3, 25)
    assert g["last_delivered_id"] == ids[24]
    assert g["last_delivered"] == pd.Timestamp(int(ids[24].split("-")[0]), unit="ms", tz="UTC")

    consumers = consumers_to_dataframe(streams_client, stream_name, "g")
    assert dtypes(consumers) == {
        "group": "category",
        "consumer": "category",
        "pending": "Int64",
        "idle": "timedelta64[ms]",
        "inactive": "timedelta64[ms]",
    }
    pending = dict(zip(consumers["consumer"].astype(str), consumers["pending"], strict=True))
    assert pending == {"streamlab:retry": 1, "w1": 14, "w2": 10}
    # 40 entries, 25 delivered; the deletions lie before the last delivered id, so lag holds.
    assert (g["entries_read"], g["lag"]) == (25, 15)
    assert groups.set_index("group").loc["idle-group", "lag"] == 0
    for row in streams_client.redis.xinfo_groups(stream_name):
        mine = groups.set_index("group").loc[row["name"].decode()]
        ours = [None if pd.isna(v) else v for v in (mine["entries_read"], mine["lag"])]
        assert ours == [row["entries-read"], row["lag"]]
    # `inactive` comes from Redis >= 7.2 (and Valkey); older servers leave it empty.
    for row in streams_client.redis.xinfo_consumers(stream_name, "g"):
        mine = consumers.set_index("consumer").loc[row["name"].decode()]
        if "inactive" in row:
            # Read a moment after the frame: as long or a little longer.
            later = pd.Timedelta(milliseconds=row["inactive"])
            assert mine["inactive"] <= later < mine["inactive"] + pd.Timedelta(seconds=1)
        else:
            assert pd.isna(mine["inactive"])
    empty = groups_to_dataframe(redis_client, stream_name + "-missing")
    assert empty.empty
    assert list(empty.columns) == list(groups.columns)


# -- DLQ ----------------------------------------------------------------------------------------


def _traceback(func: str) -> str:
    return (
        "Traceback (most recent call last):\n"
        '  File "/srv/app/handlers.py", line 41, in handle\n'
        f'  File "/srv/app/orders.py", line 7, in {func}\n'
        "KeyError: 'x'\n"
    )


def _dead_letters(client: RedisStreamsClient, stream: str) -> list[dict[str, str | bytes]]:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    letters = []
    for i, event in enumerate(sample_events(30, seed=7)):
        if i % 3:
            failure = Failure(
                error=f"order {1000 + i} not found for tenant '{event.tenant_id}'",
                error_type="KeyError",
                traceback=_traceback("load_order"),
                attempts=4,
                source_stream=stream,
                source_id=f"{1700000000000 + i}-0",
                group="billing",
                consumer=f"worker-{i % 2}",
                failed_at=base + timedelta(minutes=i),
            )
        else:
            failure = Failure(
                error=f"timeout after {i}.5s talking to 10.0.0.{i}:6379",
                error_type="TimeoutError",
                attempts=1,
                source_stream=stream,
                source_id=f"{1700000000000 + i}-0",
                group="billing",
                consumer="worker-0",
                failed_at=base + timedelta(minutes=i),
            )
        letters.append({**encode_event(event), **failure.to_fields()})
    client.add_many(client.dlq_stream(stream), letters)
    return letters


def test_dlq_frame_typed(streams_client: RedisStreamsClient, stream_name: str) -> None:
    letters = _dead_letters(streams_client, stream_name)
    df = dlq_to_dataframe(streams_client, stream_name)
    # When, which event, which bug first; then the rest of the failure and of the event.
    assert list(df.columns) == [
        "id", "ts", "failed_at", "event_type", "tenant_id", "repository", "error_signature",
        "error_type", "error", "attempts", "event_id", "source_stream", "source_id", "group",
        "consumer", "timestamp", "retry_count", "payload", "auth_context", "traceback",
        *BASE[10:],
    ]  # fmt: skip
    assert dtypes(df) == {
        **BASE_DTYPES,
        "failed_at": "datetime64[ms, UTC]",
        "error_signature": "category",
        "error_type": "category",
        "error": "str",
        "attempts": "Int64",
        "source_stream": "category",
        "source_id": "str",
        "group": "category",
        "consumer": "category",
        "traceback": "str",
    }
    assert df["error"].tolist() == [x["dlq_error"] for x in letters]
    assert df["attempts"].tolist() == [int(x["dlq_attempts"]) for x in letters]
    assert df["failed_at"].tolist() == [
        pd.Timestamp(x["dlq_failed_at"]).floor("ms") for x in letters
    ]
    assert df["event_id"].tolist() == [x["id"] for x in letters]
    assert set(df["error_signature"].astype(str)) == {
        "KeyError: order <n> not found for tenant <str> [" + df["error_signature"][1][-9:],
        "TimeoutError: timeout after <duration> talking to <ip>",
    }


def test_dlq_summary_and_failures_over_time(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    _dead_letters(streams_client, stream_name)
    df = dlq_to_dataframe(streams_client, stream_name)
    summary = dlq_summary(df)
    assert summary["count"].tolist() == [20, 10]
    assert summary["error_type"].astype(str).tolist() == ["KeyError", "TimeoutError"]
    first = summary.iloc[0]
    assert first["first_failure"] == pd.Timestamp("2026-01-01T00:01:00Z")
    assert first["last_failure"] == pd.Timestamp("2026-01-01T00:29:00Z")
    assert first["example_id"] == df["id"][1]

    by_two = dlq_summary(df, by=("error_type", "consumer"))
    assert by_two["count"].sum() == 30
    assert list(by_two.columns[:3]) == ["error_type", "consumer", "count"]
    buckets = failures_over_time(df, "10min")
    assert buckets["failures"].tolist() == [10, 10, 10]
    split = failures_over_time(df, "10min", by="error_type")
    assert split.sum().to_dict() == {"KeyError": 20, "TimeoutError": 10}
    # Counters are Int64 in every frame, the per-value columns of ``by`` too.
    assert buckets["failures"].dtype == split["KeyError"].dtype == "Int64"
    assert failures_over_time(df.iloc[:0])["failures"].dtype == "Int64"


def test_summaries_name_a_bad_column_or_frequency_and_what_is_allowed(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    _dead_letters(streams_client, stream_name)
    df = dlq_to_dataframe(streams_client, stream_name)
    for by in ("bogus", ["error_type", "bogus"], [], 5, None):
        with pytest.raises(ArgumentError, match=r"^by: no column .* its columns are \['id', "):
            dlq_summary(df, by=by)
    with pytest.raises(ArgumentError, match="by: no column 'bogus'"):
        failures_over_time(df, by="bogus")
    with pytest.raises(ArgumentError, match="time_column: no column 'bogus'"):
        dlq_summary(df, time_column="bogus")
    with pytest.raises(ArgumentError, match=r"time_column: column 'error' holds str, not times"):
        failures_over_time(df, time_column="error")
    with pytest.raises(ArgumentError, match="df: expected a DataFrame"):
        dlq_summary([1, 2])
    # freq: pandas decides what an alias is; its error becomes one naming the argument.
    for freq, reason in (
        ("bogus", r"'bogus' is not a pandas frequency \(offset alias\) such as '30s', '5min'"),
        ("3", "'3' is not a pandas frequency"),
        (5, "expected a pandas frequency"),
        ("-5min", r"must be > 0, got '-5min'"),
        ("0min", "must be > 0"),
    ):
        with pytest.raises(ArgumentError, match=rf"^freq: {reason}"):
            failures_over_time(df, freq)
    # A calendar frequency counts (its buckets have no one width, so it cannot be plotted).
    assert failures_over_time(df, "MS")["failures"].tolist() == [30]
    with pytest.raises(ArgumentError, match="top: must be >= 0"):
        plot_failures(df, top=-1)
    with pytest.raises(ArgumentError, match="freq: bars need a fixed width"):
        plot_failures(df, "MS")
    assert bucket_for("6h") == bucket_for(timedelta(hours=6)) == "10min"
    for span, buckets, match in (("x", 40, "span: invalid duration"), ("1h", 0, "buckets")):
        with pytest.raises(ArgumentError, match=match):
            bucket_for(span, buckets)


def test_dlq_custom_name(redis_client: redis.Redis, stream_name: str) -> None:
    client = RedisStreamsClient(redis_client, dlq_names={stream_name: stream_name + ":dead"})
    failure = Failure(error="boom", error_type="RuntimeError").to_fields()
    redis_client.xadd(stream_name + ":dead", {"event_type": "x", **failure})
    assert len(dlq_to_dataframe(client, stream_name)) == 1
    assert len(dlq_to_dataframe(redis_client, stream_name, dlq=stream_name + ":dead")) == 1
    assert dlq_to_dataframe(redis_client, stream_name).empty


# -- parquet and progress -------------------------------------------------------------------------


def test_parquet_round_trip(
    streams_client: RedisStreamsClient, stream_name: str, tmp_path: Path
) -> None:
    streams_client.add_many(stream_name, sample_events(95, seed=5))
    # Invalid values too: they must come back flagged, with their raw bytes.
    streams_client.redis.xadd(
        stream_name, {"event_type": "push", "retry_count": "x", "timestamp": "soon", "b": b"\xff"}
    )
    path = tmp_path / "events.parquet"
    paths = ["sender.login", "ref"]
    written = export_parquet(streams_client, stream_name, path, chunk_rows=20, payload_fields=paths)
    frame = stream_to_dataframe(streams_client, stream_name, payload_fields=paths)
    assert written == 96
    assert pq.ParquetFile(path).metadata.num_row_groups == 5
    assert frame["_decode_error"].notna().sum() == 1
    pd.testing.assert_frame_equal(read_parquet(path), frame)
    # Any Parquet reader sees the stored columns: paths as JSON text, late fields in _extra.
    stored = pd.read_parquet(path)
    assert json.loads(stored["payload.sender.login"].dropna().iloc[0]) in set(
        frame["payload.sender.login"].dropna()
    )
    assert json.loads(stored["_extra"].iloc[-1]) == {"b": "\\xff"}


def test_parquet_schema_holds_when_values_change_type_across_chunks(
    redis_client: redis.Redis, stream_name: str, tmp_path: Path
) -> None:
    docs: list[object] = [None, None, 7, 8, "eight", {"n": 9}]
    for doc in docs:
        redis_client.xadd(stream_name, {"event_type": "a", "payload": json.dumps({"v": doc})})
    for _ in range(2):  # fields first seen after the first chunk, typed by their names
        redis_client.xadd(
            stream_name,
            {"event_type": "a", "attempts": "3", "consumer": "w1", "note": "late"},
        )
    path = tmp_path / "changing.parquet"
    assert export_parquet(redis_client, stream_name, path, chunk_rows=2, payload_fields=["v"]) == 8
    back = read_parquet(path)
    frame = stream_to_dataframe(redis_client, stream_name, payload_fields=["v"])
    pd.testing.assert_frame_equal(back, frame)
    # Mixed JSON types: JSON text, as stream_to_dataframe gives them.
    assert back["payload.v"].tolist()[2:6] == ["7", "8", "eight", '{"n": 9}']
    assert back["payload.v"].iloc[[0, 1, 6, 7]].isna().all()
    assert back["attempts"].dtype == "Int64"
    assert back["consumer"].dtype == "category"


def test_parquet_later_fields_and_empty(
    redis_client: redis.Redis, stream_name: str, tmp_path: Path
) -> None:
    for i in range(5):
        redis_client.xadd(stream_name, {"event_type": "a", "n": str(i)})
    redis_client.xadd(stream_name, {"event_type": "b", "late": "value", "blob": b"\xff"})
    path = tmp_path / "mixed.parquet"
    assert export_parquet(redis_client, stream_name, path, chunk_rows=5) == 6
    back = pd.read_parquet(path)
    assert json.loads(back["_extra"][5]) == {"late": "value", "blob": "\\xff"}
    assert dict(back["_raw"][5]) == {"blob": b"\xff"}
    assert back["n"].tolist()[:5] == ["0", "1", "2", "3", "4"]
    pd.testing.assert_frame_equal(
        read_parquet(path), stream_to_dataframe(redis_client, stream_name)
    )

    empty = tmp_path / "empty.parquet"
    assert export_parquet(redis_client, stream_name + "-missing", empty) == 0
    assert list(pd.read_parquet(empty).columns) == [*BASE, "_extra"]
    assert list(read_parquet(empty).columns) == BASE


def test_parquet_export_of_chosen_ids(
    redis_client: redis.Redis, stream_name: str, tmp_path: Path
) -> None:
    ids = [redis_client.xadd(stream_name, {"event_type": "a", "n": str(i)}).decode()
           for i in range(12)]  # fmt: skip
    chosen = [ids[2], ids[5], ids[9]]
    path = tmp_path / "chosen.parquet"
    # Within the ids' span the others are skipped; the caller's bounds still apply.
    assert export_parquet(redis_client, stream_name, path, ids=[*chosen, "1-0"]) == 3
    back = read_parquet(path)
    assert back["id"].tolist() == chosen
    whole = stream_to_dataframe(redis_client, stream_name)
    pd.testing.assert_frame_equal(back, whole[whole["id"].isin(chosen)].reset_index(drop=True))
    assert export_parquet(redis_client, stream_name, path, ids=chosen, since=ids[3]) == 2
    assert export_parquet(redis_client, stream_name, path, ids=[]) == 0
    assert len(pd.read_parquet(path)) == 0
    with pytest.raises(ArgumentError):
        export_parquet(redis_client, stream_name, path, ids=ids[0])


def test_parquet_export_filtered_in_the_one_read(
    streams_client: RedisStreamsClient, stream_name: str, tmp_path: Path
) -> None:
    from streamlab.filters import DLQFilter
    from streamlab.replay import select_dlq

    r = streams_client.redis
    dlq = streams_client.dlq_stream(stream_name)
    for i, event in enumerate(sample_events(30)):
        kind = "KeyError" if i % 3 else "ValueError"
        failure = Failure(error=f"boom {i}", error_type=kind, source_stream=stream_name)
        r.xadd(dlq, {**encode_event(event), **failure.to_fields(), **({"late": "x"} if i > 20
                                                                     else {})})  # fmt: skip
    whole = dlq_to_dataframe(streams_client, stream_name)
    flt = DLQFilter.of(error_type="KeyError")
    path = tmp_path / "some.parquet"
    # Chunks of 4: the filter runs per chunk, the schema still comes from a chunk with rows.
    assert export_parquet(streams_client, stream_name, path, dlq=True, filters=flt,
                          chunk_rows=4) == 20  # fmt: skip
    pd.testing.assert_frame_equal(
        read_parquet(path), flt.apply(whole).reset_index(drop=True), check_categorical=False
    )
    # The limit caps the matches written, as select_dlq's caps what it selects.
    n = export_parquet(streams_client, stream_name, path, dlq=True, filters=flt, limit=7)
    assert read_parquet(path)["id"].tolist() == select_dlq(streams_client, stream_name, flt,
                                                           limit=7).ids  # fmt: skip
    assert n == 7
    # The filter's ids narrow the read; no match is an empty file with the DLQ's columns.
    some = whole["id"].tolist()[1:4]
    flt_ids = DLQFilter.of(ids=some, error_type="KeyError")
    assert export_parquet(streams_client, stream_name, path, dlq=True, filters=flt_ids) == 2
    assert read_parquet(path)["id"].tolist() == some[:2]  # the third is a ValueError
    none = DLQFilter.of(error_type="NoSuchError")
    assert export_parquet(streams_client, stream_name, path, dlq=True, filters=none) == 0
    assert list(read_parquet(path).columns) == list(whole.columns)
    with pytest.raises(ArgumentError, match="filters: they select dead letters"):
        export_parquet(streams_client, stream_name, path, filters=flt)
    with pytest.raises(ArgumentError, match="filters: expected a DLQFilter"):
        export_parquet(streams_client, stream_name, path, dlq=True, filters="KeyError")  # type: ignore[arg-type]


def test_progress_bar(
    redis_client: redis.Redis,
    stream_name: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    redis_client.xadd(stream_name, {"event_type": "a"})
    assert len(stream_to_dataframe(redis_client, stream_name, progress=True)) == 1
    # The bar is gone once done; the summary line stays (a saved notebook keeps it).
    assert f"{stream_name}: 1 entries in " in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(MissingDependencyError, match=r"streamlab\[notebook\]"):
        stream_to_dataframe(redis_client, stream_name, progress=True)
    assert len(stream_to_dataframe(redis_client, stream_name)) == 1


def test_notebook_shows_progress_by_default(
    redis_client: redis.Redis,
    stream_name: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Shell:
        def __init__(self) -> None:
            self.config = {"IPKernelApp": {}}

    class FakeIPython:
        @staticmethod
        def get_ipython() -> Shell:
            return Shell()

    redis_client.xadd(stream_name, {"event_type": "a"})
    stream_to_dataframe(redis_client, stream_name)
    assert stream_name not in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "IPython", FakeIPython)
    stream_to_dataframe(redis_client, stream_name)
    shown = capsys.readouterr()
    assert stream_name in shown.err  # the bar
    assert f"{stream_name}: 1 entries in " in shown.out  # the line a saved notebook keeps
    stream_to_dataframe(redis_client, stream_name, progress=False)
    assert stream_name not in capsys.readouterr().err


def test_parsed_reply_fallback_gives_the_same_frames(
    streams_client: RedisStreamsClient, redis_client: redis.Redis, stream_name: str
) -> None:
    """Clients other than redis.Redis (e.g. RedisCluster) go through redis-py's parsed
    replies; the frames must not differ."""
    from streamlab.frames._fetch import Fetcher

    _pending_setup(streams_client, stream_name)
    parsed = Fetcher(redis_client)
    parsed._raw = None
    for build in (
        lambda c: stream_to_dataframe(c, stream_name, page_size=7),
        lambda c: pending_to_dataframe(c, stream_name, "g", page_size=6).drop(
            # Times since now; retry_due_at too for a waiting retry without a due time.
            columns=["idle", "consumer_idle", "retry_due_at"]
        ),
    ):
        pd.testing.assert_frame_equal(build(parsed), build(redis_client))


def test_integers_past_64_bits_are_decode_errors_in_every_frame(
    redis_client: redis.Redis, stream_name: str, tmp_path: Path
) -> None:
    # retry_count 9223372036854775808 raised OverflowError out of stream_to_dataframe.
    good = encode_event(next(sample_events(1)))
    huge = {
        "retry_count": b"9223372036854775808",  # 2**63: one past int64
        "attempts": b"-9223372036854775809",
        "dlq_attempts": b"1" * 40,
        "streamlab:replay_count": b"18446744073709551616",
    }
    redis_client.xadd(stream_name, good)
    for name, value in huge.items():
        redis_client.xadd(stream_name, {**good, name: value})
    redis_client.xadd(stream_name, {**good, "retry_count": b"9223372036854775807"})  # int64 max
    redis_client.xgroup_create(stream_name, "g", "0")
    redis_client.xreadgroup("g", "c", {stream_name: ">"})
    parquet = tmp_path / "s.parquet"
    export_parquet(redis_client, stream_name, parquet)
    frames = {
        "stream": stream_to_dataframe(redis_client, stream_name),
        "dlq": dlq_to_dataframe(redis_client, stream_name, dlq=stream_name),
        "pending": pending_to_dataframe(redis_client, stream_name, "g"),
        "parquet": read_parquet(parquet),
    }
    renamed = {"dlq": {"dlq_attempts": "attempts"}}  # the DLQ frame drops the prefix
    for kind, df in frames.items():
        assert len(df) == 6, kind
        assert pd.isna(df["_decode_error"][0]), kind
        for row, (name, value) in enumerate(huge.items(), start=1):
            column = renamed.get(kind, {}).get(name, name)
            assert df["_decode_error"][row] == f"{column}: integer out of the 64-bit range", kind
            assert df["_raw"][row] == {column: value}, kind
            assert pd.isna(df[column][row]), kind
            assert str(df[column].dtype) == "Int64", (kind, column)
        assert df["retry_count"][5] == 2**63 - 1, kind


def test_a_payload_too_deep_for_json_is_a_decode_error(
    redis_client: redis.Redis, stream_name: str
) -> None:
    deep = "[" * 5000 + "]" * 5000
    redis_client.xadd(stream_name, {"event_type": "x", "payload": deep, "auth_context": deep})
    df = stream_to_dataframe(redis_client, stream_name, payload_fields=["0.0"])
    assert df["_decode_error"][0] == "payload: JSON nested too deep to parse"
    assert pd.isna(df["payload.0.0"][0])


def test_times_outside_years_1_to_9999_are_decode_errors(
    redis_client: redis.Redis, stream_name: str
) -> None:
    # "-0" parsed as year 0, and reading the frame's value raised OverflowError.
    for value in (b"-0", b"0000-01-01T00:00:00Z", b"2026-01-01T00:00:00Z"):
        redis_client.xadd(stream_name, {"event_type": "t", "timestamp": value})
    df = stream_to_dataframe(redis_client, stream_name)
    assert df["_decode_error"].tolist()[:2] == ["timestamp: not an RFC 3339 time"] * 2
    assert df["timestamp"][:2].isna().all()
    assert df["timestamp"][2] == pd.Timestamp("2026-01-01T00:00:00Z")
    assert df["_raw"][1] == {"timestamp": b"0000-01-01T00:00:00Z"}


def test_overlapped_pages_match_sequential_xrange_and_early_stop_leaves_pool_clean(
    redis_client: redis.Redis, stream_name: str
) -> None:
    from streamlab.frames._fetch import Fetcher

    pipe = redis_client.pipeline(transaction=False)
    for i in range(25):
        pipe.xadd(stream_name, {"n": str(i)})
    pipe.execute()
    fetch = Fetcher(redis_client)
    expected = [eid for eid, _ in redis_client.xrange(stream_name)]
    for limit in (None, 0, 7, 10, 25, 30):
        got = [e[0] for page in fetch.pages(stream_name, limit=limit, page_size=5) for e in page]
        assert got == expected[: len(expected) if limit is None else limit]
    # Stopping after the first page leaves the second page's reply unread on its connection:
    # that connection must not be handed, reply and all, to the next command.
    pages = fetch.pages(stream_name, page_size=5)
    assert len(next(pages)) == 5
    pages.close()
    assert redis_client.set("k-" + stream_name, "v") is True
    assert redis_client.get("k-" + stream_name) == b"v"
    assert [e[0] for p in fetch.pages(stream_name, page_size=100) for e in p] == expected


def test_the_collector_is_paused_only_while_pages_are_read(
    redis_client: redis.Redis, stream_name: str
) -> None:
    import gc

    redis_client.xadd(stream_name, {"event_type": "t"})
    assert gc.isenabled()
    assert len(stream_to_dataframe(redis_client, stream_name)) == 1
    assert gc.isenabled()
    gc.disable()
    try:  # a caller's own choice is kept
        assert len(stream_to_dataframe(redis_client, stream_name)) == 1
        assert not gc.isenabled()
    finally:
        gc.enable()
    redis_client.set("k-" + stream_name, "v")
    with pytest.raises(WrongTypeError):  # and an error on the way enables it again
        stream_to_dataframe(redis_client, "k-" + stream_name)
    assert gc.isenabled()


def test_decode_errors_read_in_each_entrys_field_order_across_pages(
    redis_client: redis.Redis, stream_name: str
) -> None:
    # Columns are decoded once per column after the last page; a row's reasons still follow
    # the order of its own fields, and each page's errors land on that page's rows.
    redis_client.xadd(stream_name, {"event_type": "ok", "retry_count": "1"})
    redis_client.xadd(stream_name, {"retry_count": "x", "event_type": b"\xff"})
    redis_client.xadd(stream_name, {"event_type": b"\xfe", "retry_count": "y"})
    df = stream_to_dataframe(redis_client, stream_name, page_size=1)
    assert df["_decode_error"].isna().tolist() == [True, False, False]
    assert df["_decode_error"][1].split("; ")[0] == "retry_count: not an integer"
    assert df["_decode_error"][1].split("; ")[1].startswith("event_type: not UTF-8")
    assert df["_decode_error"][2].split("; ")[0].startswith("event_type: not UTF-8")
    assert df["_decode_error"][2].split("; ")[1] == "retry_count: not an integer"
    assert df["retry_count"].isna().tolist() == [False, True, True]
    assert df["_raw"][2] == {"event_type": b"\xfe", "retry_count": b"y"}


@pytest.mark.parametrize("limit", [None, 1, 3, 4, 5, 8, 10, 11])
def test_paged_reads_stop_at_the_limit_across_page_boundaries(
    streams_client: RedisStreamsClient,
    redis_client: redis.Redis,
    stream_name: str,
    limit: int | None,
) -> None:
    """One paging rule (`frames._fetch.paged`) for XRANGE, overlapped or not, and XPENDING:
    pages of 4 over 10 entries give the first ``limit`` rows, each once, in order."""
    from streamlab.frames._fetch import fetcher

    ids = [redis_client.xadd(stream_name, {"event_type": "push"}).decode() for _ in range(10)]
    redis_client.xgroup_create(stream_name, "g", id="0")
    redis_client.xreadgroup("g", "w", {stream_name: ">"})
    want = ids[:limit]
    source = fetcher(streams_client)

    def flat(pages: object) -> list[str]:
        return [bytes(entry[0]).decode() for page in pages for entry in page]  # type: ignore[attr-defined]

    assert flat(source.pages(stream_name, limit=limit, page_size=4)) == want  # overlapped
    assert flat(source._pages_sequential(stream_name, "-", "+", limit, 4)) == want  # cluster's
    assert (
        stream_to_dataframe(streams_client, stream_name, limit=limit, page_size=4)["id"].tolist()
        == want
    )
    pending = pending_to_dataframe(streams_client, stream_name, "g", limit=limit, page_size=4)
    assert pending["id"].tolist() == want


@pytest.mark.parametrize(
    "fields",
    [
        ["id", "event_id", "event_type"],
        ["event_id", "id"],
        ["repository", "repo_name", "repo"],
        ["repo_name", "repo"],
        ["tenant", "tenant_id"],
        ["ts", "group", "error", "dlq_group", "dlq_error"],
        ["note_field", "repository_field", "repository"],  # fields of these names
        ["repository_field"],
    ],
)
def test_entry_fields_turn_a_dlq_frame_s_columns_back_into_the_entry_s_fields(
    fields: list[str],
) -> None:
    columns = column_names(fields, DLQ_FRAME_RENAMES)
    back = entry_fields(columns, DLQ_FRAME_RENAMES)
    assert sorted(back.values()) == sorted(columns)
    # A renamed field comes back under the name decoding reads it from: the same event.
    assert decode_event(dict.fromkeys(back, "v") | {"event_type": "t"}).extra.keys() == (
        decode_event(dict.fromkeys(fields, "v") | {"event_type": "t"}).extra.keys()
    )
