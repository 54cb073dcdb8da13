"""Pytest fixtures that run tests against a real, private Redis-compatible server.

Use them with ``pytest_plugins = ["streamlab.testing"]`` in your ``conftest.py``. The server is
started once per session on a free loopback port (`streamlab.embedded`); set ``REDIS_URL`` to
use an external server instead. Each test gets its own stream names, so nothing is ever
flushed, on a server the tests started or on anyone else's.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator

import pytest
import redis
from redis.cluster import RedisCluster

from streamlab.client import RedisStreamsClient, connect
from streamlab.embedded import EmbeddedCluster, EmbeddedServer

__all__ = [
    "cluster",
    "cluster_client",
    "private_server",
    "redis_client",
    "redis_url",
    "stream_name",
    "streams_client",
]


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``REDIS_URL`` when set, else the URL of a private server started for the session."""
    external = os.environ.get("REDIS_URL")
    if external:
        yield external
        return
    with EmbeddedServer() as server:
        yield server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A redis-py client (bytes replies, no socket timeout) on the test server."""
    client = connect(redis_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def streams_client(redis_client: redis.Redis) -> RedisStreamsClient:
    """A `RedisStreamsClient` on the test server."""
    return RedisStreamsClient(redis_client)


@pytest.fixture
def stream_name(request: pytest.FixtureRequest) -> str:
    """A stream name unique to this test, hash-tagged so its DLQ shares its cluster slot."""
    test = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)[:40].strip("-")
    return f"{{t-{test}-{uuid.uuid4().hex[:8]}}}"


@pytest.fixture
def private_server() -> Iterator[EmbeddedServer]:
    """A server of this test's own, with an AOF, that the test may kill and restart."""
    with EmbeddedServer(appendonly=True) as server:
        yield server


@pytest.fixture(scope="session")
def cluster() -> Iterator[EmbeddedCluster]:
    """A private 3-master Redis Cluster (no replicas) for the session; name streams with a hash
    tag (`stream_name` does) so that a stream and its DLQ share a slot. Tests that kill nodes
    start an `EmbeddedCluster` of their own."""
    with EmbeddedCluster() as nodes:
        yield nodes


@pytest.fixture
def cluster_client(cluster: EmbeddedCluster) -> Iterator[RedisCluster]:
    """A `redis.cluster.RedisCluster` (bytes replies, no socket timeout) on `cluster`."""
    client = cluster.client()
    try:
        yield client
    finally:
        client.close()
