from streamlab.client import RedisStreamsClient
from streamlab.events import StreamEvent


def test_add_and_read_roundtrip(streams_client: RedisStreamsClient, stream_name: str) -> None:
    assert streams_client.ensure_group(stream_name, "g") is True
    event = StreamEvent(event_type="push", repository="o/r", payload={"ref": "main"})
    entry_id = streams_client.add_to_stream(stream_name, event)
    [msg] = streams_client.read_from_stream(stream_name, "g", "c", 10)
    assert msg.id == entry_id
    assert msg.event == event
