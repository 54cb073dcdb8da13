"""The whole loop with a real Consumer: fail, dead-letter, try the fix, replay, consume."""

from __future__ import annotations

from datetime import timedelta

from streamlab.client import RedisStreamsClient
from streamlab.consumer import Consumer, ConsumerConfig
from streamlab.events import StreamEvent, StreamMessage
from streamlab.replay import replay_dlq, replay_outcome, select_dlq, try_handler


def consumer(client: RedisStreamsClient, stream: str, group: str) -> Consumer:
    config = ConsumerConfig(
        stream=stream,
        group=group,
        consumer=f"{group}-worker",
        block_duration=timedelta(milliseconds=50),
        max_retries=0,
    )
    return Consumer(client, config)


def broken(msg: StreamMessage) -> None:
    assert msg.event is not None
    if msg.event.payload["n"] % 2:
        raise ConnectionError(f"billing API down for {msg.event.id}")


def test_dead_letters_replayed_and_acked_by_a_running_consumer(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    r = streams_client.redis
    events = [StreamEvent(id=f"evt-{n}", event_type="push", payload={"n": n}) for n in range(10)]
    streams_client.add_many(stream_name, events)
    audit_seen: list[str] = []
    audit = consumer(streams_client, stream_name, "audit")
    audit.run(lambda m: audit_seen.append(m.id), burst=True, handle_signals=False)
    assert len(audit_seen) == 10

    stats = consumer(streams_client, stream_name, "billing").run(
        broken, burst=True, handle_signals=False
    )
    assert stats.dead_lettered == 5
    sel = select_dlq(streams_client, stream_name, error_types="ConnectionError")
    assert len(sel) == 5
    assert {m.failure.group for m in sel if m.failure} == {"billing"}

    assert try_handler(broken, sel)["outcome"].tolist() == ["error"] * 5
    handled: list[StreamMessage] = []
    assert try_handler(handled.append, sel)["outcome"].tolist() == ["ok"] * 5
    handled.clear()

    report = replay_dlq(streams_client, stream_name, sel)
    assert len(report.replayed) == 5
    assert r.xlen(streams_client.dlq_stream(stream_name)) == 0

    stats = consumer(streams_client, stream_name, "billing").run(
        handled.append, burst=True, handle_signals=False
    )
    assert stats.acked == 5
    assert sorted(m.event.id for m in handled if m.event) == [f"evt-{n}" for n in (1, 3, 5, 7, 9)]
    assert all(m.event is not None and m.event.retry_count == 0 for m in handled)
    assert {m.id for m in handled} == set(report.mapping.values())

    # The audit group already handled these events: it acks and skips the replays.
    audit_seen.clear()
    stats = audit.run(lambda m: audit_seen.append(m.id), burst=True, handle_signals=False)
    assert audit_seen == []
    assert stats.skipped == 5
    assert r.xpending(stream_name, "audit")["pending"] == 0

    outcome = replay_outcome(streams_client, stream_name, report.replay_id)
    assert outcome["group"].tolist() == ["billing"] * 5
    assert outcome["state"].tolist() == ["acked"] * 5
