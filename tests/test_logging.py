"""Structured log lines for dead letters, retries, reclaims and replays; silent by default."""

from __future__ import annotations

import logging
import subprocess
import sys
from datetime import timedelta

import pytest

from streamlab.backoff import Backoff
from streamlab.client import RedisStreamsClient
from streamlab.consumer import Consumer, ConsumerConfig
from streamlab.errors import Reject
from streamlab.events import StreamEvent, StreamMessage
from streamlab.replay import replay_dlq


def test_dead_letters_retries_reclaims_and_replays_are_logged(
    streams_client: RedisStreamsClient, stream_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    r = streams_client.redis
    ids = streams_client.add_many(stream_name, [StreamEvent(event_type="push") for _ in range(3)])
    streams_client.ensure_group(stream_name, "g")
    r.xreadgroup("g", "dead", {stream_name: ">"}, count=1)  # a worker dies holding ids[0]
    r.xclaim(stream_name, "g", "dead", 0, [ids[0]], idle=3_600_000, justid=True)
    attempts: dict[str, int] = {}

    def handler(msg: StreamMessage) -> None:
        attempts[msg.id] = attempts.get(msg.id, 0) + 1
        if msg.id == ids[1]:
            raise Reject("bad event")
        if msg.id == ids[2] and attempts[msg.id] == 1:
            raise RuntimeError("try again")

    cfg = ConsumerConfig(
        stream=stream_name, group="g", consumer="w", claim_min_idle=timedelta(seconds=30),
        backoff=Backoff(initial=timedelta(milliseconds=10)),
    )  # fmt: skip
    with caplog.at_level(logging.DEBUG, logger="streamlab"):
        consumer = Consumer(streams_client, cfg)
        consumer.run(handler, burst=True, handle_signals=False)
        dlq_ids = [i.decode() for i, _ in r.xrange(consumer.dlq_stream)]
        report = replay_dlq(streams_client, stream_name)
    records = {(rec.name, rec.getMessage().split(" ")[0]): rec for rec in caplog.records}
    dead = records["streamlab.consumer", "dead-lettered"]
    assert (dead.entry_id, dead.group, dead.attempts) == (ids[1], "g", 1)  # type: ignore[attr-defined]
    assert dlq_ids == [dead.dlq_id]  # type: ignore[attr-defined]
    retry = records["streamlab.consumer", "retry"]
    assert (retry.levelno, retry.entry_id) == (logging.DEBUG, ids[2])  # type: ignore[attr-defined]
    reclaim = records["streamlab.consumer", "reclaimed"]
    assert reclaim.entry_ids == [ids[0]]  # type: ignore[attr-defined]
    replay = records["streamlab.replay", "replay"]
    assert (replay.replay_id, replay.replayed) == (report.replay_id, 1)  # type: ignore[attr-defined]
    assert all(rec.levelno < logging.WARNING for rec in (dead, reclaim, replay))


def test_silent_at_the_default_level(redis_url: str) -> None:
    # No logging configuration at all, as in a plain script: nothing reaches stderr.
    code = f"""
import streamlab as sl
from streamlab.errors import Reject
client = sl.RedisStreamsClient(sl.connect({redis_url!r}))
def bad(msg):
    raise Reject("no")
client.add_to_stream("logging-silent", sl.StreamEvent(event_type="x"))
cfg = sl.ConsumerConfig(stream="logging-silent", group="g", consumer="w")
sl.Consumer(client, cfg).run(bad, burst=True, handle_signals=False)
sl.replay_dlq(client, "logging-silent")
dlq = client.dlq_stream("logging-silent")
client.redis.delete("logging-silent", dlq, *client.redis.keys(dlq + ":*"))
"""
    run = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
