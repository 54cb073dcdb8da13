"""Every public function that takes a client, called with one: the client contract's tests
(`test_client.py` for RedisStreamsClient and redis.Redis, `test_cluster.py` for RedisCluster)
run each of them with each kind of client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streamlab.consumer import Consumer, ConsumerConfig
from streamlab.frames import (
    consumers_to_dataframe,
    dlq_to_dataframe,
    export_parquet,
    groups_to_dataframe,
    pending_to_dataframe,
    stream_to_dataframe,
)
from streamlab.incident import seed_incident
from streamlab.replay import replay_dlq, replay_outcome, select_dlq
from streamlab.widgets import DLQBrowser

# name -> call(client, stream, tmp_path); each reads or writes the stream `stream`, which
# holds one group ``g`` with a DLQ entry.
CALLS: dict[str, Callable[[Any, str, Any], Any]] = {
    "Consumer": lambda c, s, _: Consumer(c, ConsumerConfig(stream=s, group="g")),
    "stream_to_dataframe": lambda c, s, _: stream_to_dataframe(c, s),
    "dlq_to_dataframe": lambda c, s, _: dlq_to_dataframe(c, s),
    "pending_to_dataframe": lambda c, s, _: pending_to_dataframe(c, s, "g"),
    "groups_to_dataframe": lambda c, s, _: groups_to_dataframe(c, s),
    "consumers_to_dataframe": lambda c, s, _: consumers_to_dataframe(c, s, "g"),
    "export_parquet": lambda c, s, tmp: export_parquet(c, s, tmp / "x.parquet"),
    "select_dlq": lambda c, s, _: select_dlq(c, s),
    "replay_dlq": lambda c, s, _: replay_dlq(c, s, dry_run=True),
    "replay_outcome": lambda c, s, _: replay_outcome(c, s, replay_dlq(c, s).replay_id),
    "DLQBrowser": lambda c, s, _: DLQBrowser(c, s),
    "seed_incident": lambda c, s, _: seed_incident(c, s + ":incident", events=20),
}
