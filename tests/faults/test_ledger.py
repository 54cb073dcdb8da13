"""The ledger counts what the fault scenarios assert: checked here on a real consumer run."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path

import redis

from faults.ledger import HandledLog, ledger_check
from streamlab.client import RedisStreamsClient
from streamlab.consumer import Consumer, ConsumerConfig
from streamlab.errors import Reject
from streamlab.events import StreamEvent, StreamMessage


def test_ledger_counts_handled_dead_lettered_lost_and_duplicates(
    streams_client: RedisStreamsClient, redis_client: redis.Redis, stream_name: str, tmp_path: Path
) -> None:
    ids = streams_client.add_many(stream_name, (StreamEvent(event_type="push") for _ in range(5)))
    log = HandledLog(tmp_path / "handled.log")

    def handler(msg: StreamMessage) -> None:
        if msg.id == ids[0]:
            raise Reject("bad event")
        log.record(msg.id)

    cfg = ConsumerConfig(stream=stream_name, group="g", claim_min_idle=timedelta(seconds=5))
    Consumer(streams_client, cfg).run(handler, burst=True, handle_signals=False)

    result = ledger_check(redis_client, stream_name, "g", ids, log.counts())
    assert (result.events, result.handled, result.dlq, result.lost) == (5, 4, 1, 0)
    assert (result.duplicated, result.dlq_doubles, result.pending) == (0, 0, 0)
    result.assert_nothing_lost()

    # An id nobody handled, a duplicate and a DLQ double are each counted.
    counts = log.counts() + Counter({ids[1]: 1})
    del counts[ids[2]]
    entry = redis_client.xrange(f"{stream_name}_dlq")[0][1]
    redis_client.xadd(f"{stream_name}_dlq", entry)
    worse = ledger_check(redis_client, stream_name, "g", ids, counts)
    assert (worse.lost, worse.lost_ids, worse.duplicated) == (1, [ids[2]], 1)
    assert (worse.dlq_doubles, worse.double_ids) == (1, [ids[0]])


def test_a_partial_last_line_from_a_killed_writer_is_not_counted(tmp_path: Path) -> None:
    path = tmp_path / "handled.log"
    path.write_bytes(b"1-0\n2-0\n3-")
    assert HandledLog(path).counts() == Counter({"1-0": 1, "2-0": 1})
