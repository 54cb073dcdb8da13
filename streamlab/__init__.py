"""streamlab: Redis Streams event processing with retries, a DLQ, exporters and replay.

Everything public is re-exported here. The consumer, config, pandas exporters
(`streamlab.frames`) and replay (`streamlab.replay`) are imported only when first used, so
``import streamlab`` stays cheap and a worker does not pay for pandas at start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from streamlab.client import RedisStreamsClient, StreamsClient, connect, connect_cluster
from streamlab.embedded import EmbeddedCluster, EmbeddedServer
from streamlab.errors import (
    ArgumentError,
    ConfigError,
    DecodeError,
    EncodeError,
    GroupNotFoundError,
    MissingDependencyError,
    NotFoundError,
    PartialWriteError,
    PermissionDeniedError,
    Reject,
    Retry,
    ServerStartError,
    StreamlabError,
    StreamNotFoundError,
    WrongTypeError,
)
from streamlab.events import AuthContext, StreamEvent, StreamMessage, decode_event, encode_event
from streamlab.metrics import Metrics, PrometheusMetrics
from streamlab.records import (
    ConsumerInfo,
    Failure,
    GroupInfo,
    PendingEntry,
    ReplayMarker,
    StreamInfo,
)

if TYPE_CHECKING:
    from streamlab.backoff import Backoff
    from streamlab.config import StreamlabSettings, load_settings
    from streamlab.consumer import Consumer, ConsumerConfig, RunStats
    from streamlab.durations import Duration, format_duration, parse_duration
    from streamlab.frames import (
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
    from streamlab.replay import (
        ReplayReport,
        ReplaySelection,
        replay_dlq,
        replay_outcome,
        select_dlq,
        try_handler,
    )
    from streamlab.signatures import error_signature

_LAZY = {
    "config": ("StreamlabSettings", "load_settings"),
    "durations": ("Duration", "format_duration", "parse_duration"),
    "signatures": ("error_signature",),
    "backoff": ("Backoff",),
    "consumer": ("Consumer", "ConsumerConfig", "RunStats"),
    "frames": (
        "consumers_to_dataframe",
        "dlq_summary",
        "dlq_to_dataframe",
        "export_parquet",
        "failures_over_time",
        "groups_to_dataframe",
        "pending_to_dataframe",
        "plot_failures",
        "read_parquet",
        "stream_to_dataframe",
    ),
    "replay": (
        "ReplayReport",
        "ReplaySelection",
        "replay_dlq",
        "replay_outcome",
        "select_dlq",
        "try_handler",
    ),
}
_LAZY_NAMES = {name: module for module, names in _LAZY.items() for name in names}

__all__ = [
    # events and wire format
    "AuthContext",
    "ConsumerInfo",
    "Failure",
    "GroupInfo",
    "PendingEntry",
    "ReplayMarker",
    "StreamEvent",
    "StreamInfo",
    "StreamMessage",
    "decode_event",
    "encode_event",
    # client
    "RedisStreamsClient",
    "StreamsClient",
    "connect",
    "connect_cluster",
    # consumer
    "Backoff",
    "Consumer",
    "ConsumerConfig",
    "RunStats",
    # metrics and config
    "Duration",
    "Metrics",
    "PrometheusMetrics",
    "StreamlabSettings",
    "format_duration",
    "load_settings",
    "parse_duration",
    # servers
    "EmbeddedCluster",
    "EmbeddedServer",
    # errors
    "ArgumentError",
    "ConfigError",
    "DecodeError",
    "EncodeError",
    "GroupNotFoundError",
    "MissingDependencyError",
    "NotFoundError",
    "PartialWriteError",
    "PermissionDeniedError",
    "Reject",
    "Retry",
    "ServerStartError",
    "StreamNotFoundError",
    "StreamlabError",
    "WrongTypeError",
    # exporters (streamlab.frames) and replay (streamlab.replay), imported on first use
    "consumers_to_dataframe",
    "dlq_summary",
    "dlq_to_dataframe",
    "error_signature",
    "export_parquet",
    "failures_over_time",
    "groups_to_dataframe",
    "pending_to_dataframe",
    "plot_failures",
    "read_parquet",
    "stream_to_dataframe",
    "ReplayReport",
    "ReplaySelection",
    "replay_dlq",
    "replay_outcome",
    "select_dlq",
    "try_handler",
]


def __getattr__(name: str) -> Any:
    module = _LAZY_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'streamlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"streamlab.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
