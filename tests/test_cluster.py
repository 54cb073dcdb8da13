"""Everything on a 3-master Redis Cluster the suite starts (`cluster` fixture): the consumer
handles, retries and dead-letters; the exporters, replay and the CLI work; keys share slots.

Streams are hash-tagged (``{orders-…}``) so that a stream, its DLQ and replay's bookkeeping
keys live in one slot. The CLI is given the URL of a node that does *not* serve the stream,
so every command must follow MOVED.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
import redis
from clientlike import CALLS
from faults.ledger import ledger_check
from prometheus_client import CollectorRegistry
from redis.cluster import RedisCluster
from redis.crc import key_slot

from streamlab.backoff import Backoff
from streamlab.client import RedisStreamsClient, connect_any, connect_cluster
from streamlab.config import load_settings
from streamlab.consumer import Consumer, ConsumerConfig
from streamlab.embedded import EmbeddedCluster
from streamlab.errors import ConfigError
from streamlab.events import StreamEvent, StreamMessage
from streamlab.frames import (
    consumers_to_dataframe,
    dlq_to_dataframe,
    groups_to_dataframe,
    pending_to_dataframe,
    stream_to_dataframe,
)
from streamlab.keys import dlq_key, ledger_key, replayed_key
from streamlab.metrics import PrometheusMetrics
from streamlab.replay import replay_dlq, replay_outcome, select_dlq

FAST = Backoff(initial=timedelta(milliseconds=50), max=timedelta(milliseconds=100))


@pytest.fixture
def orders() -> str:
    """A hash-tagged stream name of this test's own."""
    return f"{{orders-{uuid.uuid4().hex[:8]}}}"


@pytest.fixture
def client(cluster_client: RedisCluster) -> RedisStreamsClient:
    return RedisStreamsClient(cluster_client)


def produce(client: RedisStreamsClient, stream: str, n: int) -> list[str]:
    events = (
        StreamEvent(
            id=f"evt-{i}",
            event_type="bad" if i % 4 == 0 else "push",
            repository="acme/api",
            tenant_id="t1",
            payload={"n": i},
        )
        for i in range(n)
    )
    return client.add_many(stream, events)


def failing_handler(seen: Counter[str]) -> Any:
    """Counts every call; events of type ``bad`` always fail."""

    def handle(msg: StreamMessage) -> None:
        seen[msg.id] += 1
        assert msg.event is not None
        if msg.event.event_type == "bad":
            raise ValueError("bad event")

    return handle


def consume(client: RedisStreamsClient, stream: str, **kwargs: Any) -> tuple[Any, Counter[str]]:
    options: dict[str, Any] = {
        "consumer": "c1",
        "max_retries": 2,
        "backoff": FAST,
        "claim_min_idle": timedelta(seconds=1),
        "block_duration": timedelta(milliseconds=100),
        **kwargs,
    }
    cfg = ConsumerConfig(stream=stream, group="g", **options)
    seen: Counter[str] = Counter()
    stats = Consumer(client, cfg).run(failing_handler(seen), burst=True, handle_signals=False)
    return stats, seen


def other_node_url(cluster: EmbeddedCluster, key: str) -> str:
    """The URL of a master that does not serve ``key``: talking to it draws MOVED."""
    owner = cluster.master_of(key)
    return next(n.url for n in cluster.masters if n.port != owner.port)


def test_derived_keys_share_the_stream_slot(orders: str) -> None:
    dlq = dlq_key(orders)
    keys = [orders, dlq, replayed_key(dlq), ledger_key(dlq, "run-1")]
    assert len({key_slot(k.encode()) for k in keys}) == 1, keys


def test_an_untagged_stream_is_refused_at_configuration(client: RedisStreamsClient) -> None:
    # Without a hash tag `orders_x` and `orders_x_dlq` hash apart; say so before any write.
    untagged = "orders_x" if key_slot(b"orders_x") != key_slot(b"orders_x_dlq") else "orders_y"
    with pytest.raises(ConfigError, match="hash tag"):
        Consumer(client, ConsumerConfig(stream=untagged, group="g"))


def test_consumer_handles_retries_and_dead_letters(
    client: RedisStreamsClient, cluster_client: RedisCluster, orders: str
) -> None:
    ids = produce(client, orders, 40)
    stats, seen = consume(client, orders)
    bad = ids[::4]
    assert stats.dead_lettered == len(bad)
    assert stats.retried == 2 * len(bad)
    assert stats.acked == len(ids) - len(bad)
    # Each bad event: the first delivery and two retries, then the DLQ.
    assert all(seen[i] == 3 for i in bad)
    result = ledger_check(cluster_client, orders, "g", ids, seen)
    result.assert_nothing_lost()
    assert result.dlq == len(bad)
    assert result.duplicated == 2 * len(bad)
    dead = client.read_dlq(orders)
    assert sorted(m.failure.source_id for m in dead if m.failure) == sorted(bad)


def test_an_entry_too_large_for_lua_is_dead_lettered_by_transaction(
    client: RedisStreamsClient, cluster_client: RedisCluster, orders: str
) -> None:
    # 5,000 fields pass Lua's unpack limit: the move runs as WATCH/MULTI on the stream's node.
    fields = {f"f{i}": str(i) for i in range(5000)}
    fields["event_type"] = "bad"
    entry = client.add_to_stream(orders, fields)
    stats, _ = consume(client, orders, max_retries=0)
    assert stats.dead_lettered == 1
    [(_, dead)] = cluster_client.xrange(dlq_key(orders), "-", "+")
    assert dead[b"dlq_source_id"] == entry.encode()
    assert all(dead[f"f{i}".encode()] == str(i).encode() for i in range(5000))
    assert cluster_client.xpending(orders, "g")["pending"] == 0
    # And back by replay, by transaction too (it picks the new id from the node's TIME).
    plan = replay_dlq(client, orders, dry_run=True)
    assert len(plan.replayed) == 1
    report = replay_dlq(client, orders)
    assert report.ok
    assert len(report.replayed) == 1
    assert cluster_client.xlen(dlq_key(orders)) == 0
    [new_id] = report.mapping.values()
    [(_, again)] = cluster_client.xrange(orders, new_id, new_id)
    assert all(again[f"f{i}".encode()] == str(i).encode() for i in range(5000))


def test_exporters(client: RedisStreamsClient, cluster_client: RedisCluster, orders: str) -> None:
    ids = produce(client, orders, 12)
    frame = stream_to_dataframe(client, orders)
    assert frame["id"].tolist() == ids
    assert set(frame["event_type"]) == {"push", "bad"}

    # Leave the entries pending with a consumer, as a crashed worker would.
    client.ensure_group(orders, "g")
    client.read_from_stream(orders, "g", "dead-worker", 5)
    pending = pending_to_dataframe(client, orders, "g")
    assert pending["id"].tolist() == ids[:5]
    assert set(pending["consumer"]) == {"dead-worker"}
    assert pending["event_type"].notna().all()

    # The dead worker's entries, made idle past claim_min_idle, are reclaimed and settled.
    cluster_client.xclaim(orders, "g", "dead-worker", 0, ids[:5], idle=5000, justid=True)
    stats, _ = consume(client, orders)
    assert stats.reclaimed == 5
    assert cluster_client.xpending(orders, "g")["pending"] == 0
    dlq = dlq_to_dataframe(client, orders)
    assert sorted(dlq["source_id"]) == sorted(ids[::4])
    assert set(dlq["error_type"]) == {"ValueError"}
    assert (dlq["group"] == "g").all()


def test_replay_dry_run_real_run_and_outcome(
    client: RedisStreamsClient, cluster_client: RedisCluster, orders: str
) -> None:
    ids = produce(client, orders, 8)
    consume(client, orders)
    bad = ids[::4]
    selection = select_dlq(client, orders, event_type="bad")
    assert len(selection.ids) == len(bad)

    plan = replay_dlq(client, orders, selection, dry_run=True)
    assert len(plan.replayed) == len(bad)
    assert not plan.failed
    assert cluster_client.xlen(dlq_key(orders)) == len(bad)  # a dry run writes nothing

    report = replay_dlq(client, orders, selection)
    assert report.ok
    assert report.replayed == plan.replayed
    assert cluster_client.xlen(dlq_key(orders)) == 0
    assert all(new is not None for new in report.mapping.values())

    # The replayed events fail again and go back to the DLQ; the outcome says so.
    consume(client, orders)
    outcome = replay_outcome(client, orders, report.replay_id)
    assert len(outcome) == len(bad)
    assert set(outcome["state"]) == {"dead_lettered"}
    assert cluster_client.xlen(dlq_key(orders)) == len(bad)


def cli(
    url: str, *args: str, cwd: os.PathLike[str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    return subprocess.run(
        [sys.executable, "-m", "streamlab.cli", *args, "--url", url],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
        cwd=cwd,
    )


def test_cli_follows_moved(
    cluster: EmbeddedCluster, client: RedisStreamsClient, orders: str
) -> None:
    ids = produce(client, orders, 8)
    consume(client, orders)
    url = other_node_url(cluster, orders)

    info = cli(url, "info", orders, "--json")
    assert info.returncode == 0, info.stderr
    data = json.loads(info.stdout)
    assert data["length"] == len(ids)
    assert [g["name"] for g in data["groups"]] == ["g"]

    pending = cli(url, "pending", orders, "g", "--json")
    assert pending.returncode == 0, pending.stderr
    assert json.loads(pending.stdout)["pending"] == []

    dlq = cli(url, "dlq", orders, "--json")
    assert dlq.returncode == 0, dlq.stderr
    assert json.loads(dlq.stdout)["count"] == len(ids[::4])

    replay = cli(url, "replay", orders, "--yes", "--json")
    assert replay.returncode == 0, replay.stderr
    report = json.loads(replay.stdout)
    assert len(report["replayed"]) == len(ids[::4])

    outcome = cli(url, "outcome", orders, report["replay_id"], "--json")
    assert outcome.returncode == 0, outcome.stderr
    assert json.loads(outcome.stdout)["states"] == {"waiting": len(ids[::4])}
    assert "Traceback" not in info.stderr + dlq.stderr + replay.stderr + outcome.stderr


@pytest.mark.parametrize("how", ["scheme", "flag"])
def test_cli_cluster_url_scheme_and_flag(
    cluster: EmbeddedCluster, client: RedisStreamsClient, orders: str, how: str
) -> None:
    produce(client, orders, 3)
    url = other_node_url(cluster, orders)
    if how == "scheme":
        done = cli(url.replace("redis://", "redis+cluster://"), "info", orders, "--json")
    else:
        done = cli(url, "info", orders, "--json", "--cluster")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["length"] == 3


def test_connect_any_detects_a_cluster_node(cluster: EmbeddedCluster) -> None:
    detected = connect_any(cluster.url)
    try:
        assert isinstance(detected, RedisCluster)
    finally:
        detected.close()


def test_connect_any_keeps_a_single_server_single(redis_url: str) -> None:
    single = connect_any(redis_url)
    try:
        assert not isinstance(single, RedisCluster)
        assert single.ping()
    finally:
        single.close()


def test_replay_to_a_stream_in_another_slot_is_refused_before_any_write(
    client: RedisStreamsClient, cluster_client: RedisCluster, orders: str
) -> None:
    ids = produce(client, orders, 4)
    consume(client, orders)
    elsewhere = "{elsewhere}" if key_slot(b"{elsewhere}") != key_slot(orders.encode()) else "{x}"
    with pytest.raises(ConfigError, match="hash tag"):
        replay_dlq(client, orders, target=elsewhere)
    assert cluster_client.xlen(dlq_key(orders)) == 1
    assert not cluster_client.exists(elsewhere)
    # A target with the stream's tag is in its slot: that works.
    same_slot = f"{orders}:retry"
    report = replay_dlq(client, orders, target=same_slot)
    assert report.ok
    [(_, replayed)] = cluster_client.xrange(same_slot, "-", "+")
    assert replayed[b"streamlab:replay_id"] == report.replay_id.encode()
    assert replayed[b"id"] == b"evt-0"  # the original event id is kept
    assert cluster_client.xlen(dlq_key(orders)) == 0
    assert ids[0] in {m.id for m in client.range(orders)}


def test_group_and_consumer_frames_and_lag_metric(client: RedisStreamsClient, orders: str) -> None:
    ids = produce(client, orders, 6)
    client.ensure_group(orders, "g")
    client.read_from_stream(orders, "g", "w1", 2)
    groups = groups_to_dataframe(client, orders)
    assert groups["group"].tolist() == ["g"]
    assert groups["pending"].tolist() == [2]
    consumers = consumers_to_dataframe(client, orders, "g")
    assert consumers["consumer"].tolist() == ["w1"]

    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    metrics.watch(client, orders)
    lag = registry.get_sample_value("queue_consumer_lag", {"stream": orders, "group": "g"})
    assert lag == len(ids) - 2


def test_cli_demo_on_a_cluster(cluster: EmbeddedCluster, tmp_path) -> None:
    # 3,000 events, some of them dead-lettered; the chart goes to tmp_path, not the checkout.
    done = cli(cluster.url, "demo", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["stream"] == "{webhook_events}"  # hash-tagged on a cluster
    assert summary["produced"] == 3000
    assert summary["dead_lettered"] == summary["replayed"] > 0
    assert summary["replay_failed"] == 0
    assert summary["dlq_length"] == 0  # every dead letter replayed and processed
    assert summary["processed_after_replay"] >= summary["replayed"]


def test_cli_cluster_flag_on_a_single_server_is_one_clear_line(redis_url: str) -> None:
    done = cli(redis_url, "info", "{orders}", "--cluster")
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert "is not a Redis Cluster node" in done.stderr
    assert "Traceback" not in done.stderr


def test_connect_cluster_to_nothing_is_a_connection_error_without_the_password() -> None:
    with pytest.raises(redis.ConnectionError, match=r"cannot reach the cluster at 127\.0\.0\.1:1"):
        connect_cluster("redis+cluster://:secret@127.0.0.1:1")
    with pytest.raises(redis.ConnectionError) as caught:
        connect_cluster("redis+cluster://:secret@127.0.0.1:1")
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize("how", ["scheme", "flag"])
def test_settings_give_a_cluster_client(cluster: EmbeddedCluster, orders: str, how: str) -> None:
    node = cluster.masters[0]
    if how == "scheme":
        redis_settings: dict[str, Any] = {"url": f"redis+cluster://127.0.0.1:{node.port}/0"}
    else:
        redis_settings = {"addr": f"127.0.0.1:{node.port}", "cluster": True}
    client = load_settings(redis=redis_settings).client()
    try:
        assert isinstance(client.redis, RedisCluster)
        produce(client, orders, 4)  # keys on every node: MOVED is followed
        assert client.get_stream_info(orders).length == 4
    finally:
        client.redis.close()


def test_settings_refuse_a_cluster_database_other_than_0() -> None:
    with pytest.raises(ConfigError, match="only database 0"):
        load_settings(redis={"addr": "127.0.0.1:7000", "cluster": True, "db": 3})


def test_connect_any_takes_a_server_refusing_info_as_single(
    redis_url: str, redis_client: redis.Redis
) -> None:
    user = f"noinfo-{uuid.uuid4().hex[:6]}"
    redis_client.acl_setuser(user, enabled=True, passwords=["+pw"], commands=["+@all", "-info"])
    try:
        url = redis_url.replace("redis://", f"redis://{user}:pw@")
        single = connect_any(url)
        try:
            assert not isinstance(single, RedisCluster)
            assert single.ping()
        finally:
            single.close()
    finally:
        redis_client.acl_deluser(user)


@pytest.mark.parametrize("call", sorted(CALLS))
def test_every_function_taking_a_client_takes_a_plain_cluster_client(
    client: RedisStreamsClient, cluster_client: RedisCluster, orders: str, tmp_path: Any, call: str
) -> None:
    produce(client, orders, 4)  # one "bad" event, dead-lettered by consume
    consume(client, orders)
    assert cluster_client.xlen(dlq_key(orders)) == 1
    CALLS[call](cluster_client, orders, tmp_path)
