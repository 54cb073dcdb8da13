"""The frames contract: a column has the same dtype in every frame streamlab makes, a missing
text is NA (never ''), and a Parquet copy of a DLQ reads back as the DLQ frame."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import redis
from test_replay_helpers import dlq_fields, fill_dlq

from streamlab.client import RedisStreamsClient
from streamlab.events import StreamMessage
from streamlab.frames import (
    COLUMN_DTYPES,
    consumers_to_dataframe,
    dlq_summary,
    dlq_to_dataframe,
    export_parquet,
    failures_over_time,
    groups_to_dataframe,
    pending_to_dataframe,
    read_parquet,
    stream_to_dataframe,
)
from streamlab.replay import replay_dlq, replay_outcome, select_dlq, try_handler
from streamlab.samples import sample_events

TEXT_DTYPES = ("str", "category")


def _dead_letters(client: RedisStreamsClient, stream: str) -> list[str]:
    """Six dead letters of two bugs, one of them with no tenant, repository or group."""
    entries = [
        dlq_fields(
            i,
            stream,
            error_type=("KeyError", "TimeoutError")[i % 2],
            error=f"order {i} not found" if i % 2 == 0 else "upstream timed out",
            tenant=f"tenant-{i % 3}",
        )
        for i in range(5)
    ]
    bare = dlq_fields(5, stream, tenant="", repository="", group="")
    entries.append({k: v for k, v in bare.items() if k not in ("tenant_id", "repository")})
    return fill_dlq(client.redis, client.dlq_stream(stream), entries)


def _every_frame(
    client: RedisStreamsClient, r: redis.Redis, stream: str, tmp_path: Path
) -> dict[str, pd.DataFrame]:
    client.add_many(stream, sample_events(20, seed=4))
    client.ensure_group(stream, "g")
    r.xreadgroup("g", "worker-9", {stream: ">"}, count=5)  # five pending with worker-9
    _dead_letters(client, stream)

    def handler(msg: StreamMessage) -> None:
        if msg.event is not None and msg.event.payload["n"] % 2:
            raise LookupError("still broken")

    selection = select_dlq(client, stream)
    dry = replay_dlq(client, stream, selection, dry_run=True)
    done = replay_dlq(client, stream, select_dlq(client, stream, error_type="KeyError"))
    frames = {
        "stream": stream_to_dataframe(client, stream),
        "pending": pending_to_dataframe(client, stream, "g"),
        "groups": groups_to_dataframe(client, stream),
        "consumers": consumers_to_dataframe(client, stream, "g"),
        "selection": selection.to_dataframe(),
        "try_handler": try_handler(handler, selection),
        "dry_run": dry.to_dataframe(),
        "dry_run.groups": dry.groups(),
        "replay": done.to_dataframe(),
        "replay.groups": done.groups(),
        "replay_outcome": replay_outcome(client, stream, done.replay_id),
    }
    # The DLQ is read once the replay has moved some entries out, so that every copy agrees.
    frames["dlq"] = dlq_to_dataframe(client, stream)
    frames["dlq_summary"] = dlq_summary(frames["dlq"])
    frames["failures_over_time"] = failures_over_time(frames["dlq"], "1h")
    export_parquet(client, stream, tmp_path / "stream.parquet")
    export_parquet(client, stream, tmp_path / "dlq.parquet", dlq=True)
    frames["read_parquet"] = read_parquet(tmp_path / "stream.parquet")
    frames["read_parquet(dlq)"] = read_parquet(tmp_path / "dlq.parquet")
    return frames


def test_the_table_follows_the_rule() -> None:
    for name, dtype in COLUMN_DTYPES.items():
        if name in ("ts", "timestamp") or name.endswith("_at") or name.endswith("_failure"):
            assert dtype == "datetime64[ms, UTC]", name
        elif name == "id" or (name.endswith("_id") and name != "tenant_id"):
            assert dtype == "str", name
    assert COLUMN_DTYPES["tenant_id"] == COLUMN_DTYPES["repository"] == "category"
    assert COLUMN_DTYPES["idle"] == COLUMN_DTYPES["duration"] == "timedelta64[ms]"
    assert COLUMN_DTYPES["attempts"] == COLUMN_DTYPES["deliveries"] == "Int64"


def test_every_frame_types_each_column_by_its_name(
    streams_client: RedisStreamsClient,
    redis_client: redis.Redis,
    stream_name: str,
    tmp_path: Path,
) -> None:
    frames = _every_frame(streams_client, redis_client, stream_name, tmp_path)
    seen: set[str] = set()
    wrong: list[str] = []
    for frame_name, frame in frames.items():
        assert len(frame), frame_name  # every frame has rows: the dtypes are not those of []
        for column in frame.columns:
            expected = COLUMN_DTYPES.get(column)
            if expected is None:
                wrong.append(f"{frame_name}.{column}: not in COLUMN_DTYPES")
                continue
            seen.add(column)
            if str(frame[column].dtype) != expected:
                wrong.append(f"{frame_name}.{column}: {frame[column].dtype}, not {expected}")
            if expected in TEXT_DTYPES and (frame[column].astype("object") == "").any():
                wrong.append(f"{frame_name}.{column}: '' where a value is missing")
    assert wrong == [], "\n".join(wrong)
    # The walk saw every kind of column: ids, times, durations, categories, counters.
    assert {"id", "new_id", "ts", "failed_at", "idle", "duration", "target", "state"} <= seen
    assert {"attempts", "deliveries", "consumers", "lag", "count", "failures"} <= seen
    assert "error_signature" in seen
    # The DLQ id is `id` in every frame that lists DLQ entries.
    for name in ("selection", "try_handler", "dry_run", "replay", "replay_outcome", "dlq"):
        assert "dlq_id" not in frames[name].columns
        assert set(frames[name]["id"]) <= set(frames["selection"]["id"]), name
    # A missing tenant is NA in each frame that has the column, not ''.
    assert frames["selection"]["tenant_id"].isna().sum() == 1
    assert frames["dlq"]["tenant_id"].isna().sum() == 1
    assert frames["try_handler"]["error"].isna().sum() == 3  # the three that went well
    # failures_over_time: its index is the time column; with ``by`` one counter per value.
    over_time = frames["failures_over_time"]
    assert str(over_time.index.dtype) == COLUMN_DTYPES[str(over_time.index.name)]
    split = failures_over_time(frames["dlq"], "1h", by="error_signature")
    assert len(split.columns) >= 1
    assert {str(t) for t in split.dtypes} == {COLUMN_DTYPES["failures"]} == {"Int64"}
    assert str(split.index.dtype) == COLUMN_DTYPES["failed_at"]


def test_parquet_copy_of_a_dlq_reads_back_as_the_dlq_frame(
    streams_client: RedisStreamsClient, stream_name: str, tmp_path: Path
) -> None:
    _dead_letters(streams_client, stream_name)
    path = tmp_path / "dlq.parquet"
    assert export_parquet(streams_client, stream_name, path, dlq=True, chunk_rows=4) == 6
    frame = dlq_to_dataframe(streams_client, stream_name)
    back = read_parquet(path)
    pd.testing.assert_frame_equal(back, frame)
    assert "error_signature" in back.columns
    assert "dlq_error" not in back.columns  # failure fields unprefixed, as dlq_to_dataframe
    pd.testing.assert_frame_equal(dlq_summary(back), dlq_summary(frame))
    assert dlq_summary(back)["count"].tolist() == [3, 3]
    # A DLQ named explicitly reads the same.
    named = tmp_path / "named.parquet"
    export_parquet(streams_client, stream_name, named, dlq=streams_client.dlq_stream(stream_name))
    pd.testing.assert_frame_equal(read_parquet(named), frame)
