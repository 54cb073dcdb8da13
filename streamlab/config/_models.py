"""The sections that are settings only: ``redis`` and the shared ``dlq``.

A stream's section is `streamlab.consumer.ConsumerConfig` itself, and its ``backoff`` is
`streamlab.backoff.Backoff`: one model per concept.
"""

from __future__ import annotations

from typing import Any, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from streamlab._config_model import ConfigModel, Count
from streamlab.durations import PositiveDuration


class RedisSettings(ConfigModel):
    """Where Redis is. ``url`` (``redis://``, ``rediss://`` or ``unix://``) wins over the rest.

    ``cluster: true`` (or a ``redis+cluster://`` URL) makes `StreamlabSettings.client` a Redis
    Cluster client, seeded from that one node.
    """

    url: SecretStr | None = None
    addr: str = "localhost:6379"
    username: str | None = None
    password: SecretStr = SecretStr("")
    db: Count = Field(default=0, ge=0)
    cluster: bool = False

    @field_validator("url", "username", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            scheme = urlsplit(value.get_secret_value()).scheme
            if scheme not in ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster"):
                raise ValueError(
                    "URL scheme must be redis://, rediss://, unix:// or redis+cluster://, "
                    f"got {scheme or 'none'!r}"
                )
        return value

    @model_validator(mode="after")
    def _cluster_db(self) -> Self:
        if self.cluster and self.db:
            raise ValueError("a Redis Cluster has only database 0: drop db or cluster")
        return self

    @field_validator("addr")
    @classmethod
    def _check_addr(cls, value: str) -> str:
        split_addr(value)
        return value


def split_addr(addr: str) -> tuple[str, int]:
    """``host:port`` (IPv6 in brackets, port defaults to 6379) as (host, port)."""
    parts = urlsplit(f"//{addr}")
    try:
        port = parts.port or 6379
    except ValueError:
        port = 0
    if not parts.hostname or port == 0 or parts.username or parts.path or parts.query:
        raise ValueError(f"expected 'host:port' like 'localhost:6379', got {addr!r}")
    return parts.hostname, port


class DLQSettings(ConfigModel):
    """Dead-letter settings shared by all streams: the DLQ name (``stream_name``, default
    ``<stream>_dlq``), its cap (``max_length``) and ``retention`` (older entries are trimmed).
    Each stream's `ConsumerConfig` gets them as ``dlq_stream``, ``dlq_maxlen`` and
    ``dlq_retention`` unless its own section sets those."""

    stream_name: str | None = Field(default=None, min_length=1)
    max_length: Count | None = Field(default=None, ge=1)
    retention: PositiveDuration | None = None
