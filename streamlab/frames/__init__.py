"""DataFrame exporters: streams, pending lists, the DLQ, groups and consumers; Parquet.

Everything here works on any stream (streamlab's events, the platform's entries, one JSON
document per entry, binary values) through a `RedisStreamsClient` or a plain redis-py client
(bytes replies), and reads with paged XRANGE / XPENDING, never one round trip per entry.
Frames are built column-wise in Arrow, so building one costs about as much as fetching it.
"""

from __future__ import annotations

from streamlab.frames._display import Table
from streamlab.frames.columns import COLUMN_DTYPES
from streamlab.frames.parquet import export_parquet, read_parquet
from streamlab.frames.pending import (
    PENDING_STATES,
    RETRY_CONSUMER,
    consumers_to_dataframe,
    groups_to_dataframe,
    pending_to_dataframe,
)
from streamlab.frames.plot import plot_failures
from streamlab.frames.stream import dlq_to_dataframe, stream_to_dataframe
from streamlab.frames.summary import bucket_for, dlq_summary, failures_over_time
from streamlab.signatures import error_signature

__all__ = [
    "COLUMN_DTYPES",
    "PENDING_STATES",
    "RETRY_CONSUMER",
    "Table",
    "bucket_for",
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
]
