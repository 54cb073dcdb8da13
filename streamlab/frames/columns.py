"""One table: a column's name gives its dtype, in every frame streamlab makes.

Ids are ``str``; times ``datetime64[ms, UTC]``; durations ``timedelta64[ms]``; streams,
groups, consumers, event types, tenants, repositories, error types and other small sets of
values ``category``; counters ``Int64``; free text ``str``. A missing value is NA (NaN in a
``str`` column), never ``''``. A stream field the table does not name is ``str``; the
``payload.<path>`` columns keep their JSON type.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import pandas as pd

from streamlab.records import REPLAY_PREFIX

__all__ = ["COLUMN_DTYPES", "DURATION", "TIME", "dtype_of", "typed"]

TIME: Final = "datetime64[ms, UTC]"
DURATION: Final = "timedelta64[ms]"

_R = REPLAY_PREFIX
_IDS = (
    "id", "event_id", "source_id", "dlq_source_id", "new_id", "dlq_entry_id", "example_id",
    "last_delivered_id", _R + "replay_id", _R + "replay_of",
)  # fmt: skip
_TIMES = (
    "ts", "timestamp", "failed_at", "dlq_failed_at", _R + "replayed_at", "last_delivered",
    "retry_due_at", "first_failure", "last_failure",
)  # fmt: skip
_DURATIONS = ("idle", "consumer_idle", "inactive", "duration")
_CATEGORIES = (
    "stream", "source_stream", "dlq_source_stream", "target", "group", "dlq_group",
    _R + "replay_group", "consumer", "dlq_consumer", "event_type", "tenant_id", "repository",
    "sender_name", "error_type", "dlq_error_type", "error_signature", "state", "outcome",
)  # fmt: skip
_COUNTERS = (
    "retry_count", "attempts", "dlq_attempts", "replay_count", _R + "replay_count",
    "deliveries", "consumers", "pending", "entries_read", "lag", "count", "failures",
)  # fmt: skip
_TEXTS = (
    "payload", "auth_context", "error", "dlq_error", "traceback", "dlq_traceback", "reason",
    "example_error", "_decode_error",
)  # fmt: skip

COLUMN_DTYPES: Final[dict[str, str]] = {
    **dict.fromkeys(_IDS, "str"),
    **dict.fromkeys(_TIMES, TIME),
    **dict.fromkeys(_DURATIONS, DURATION),
    **dict.fromkeys(_CATEGORIES, "category"),
    **dict.fromkeys(_COUNTERS, "Int64"),
    **dict.fromkeys(_TEXTS, "str"),
    "claimable": "bool",
    "deleted": "boolean",  # NA when the entries were not read
    "_raw": "object",  # {field: bytes} of the values that did not decode
    "ids": "object",  # a list of ids per folded row
}


def dtype_of(name: str) -> str:
    """The dtype of column ``name``: the table's, else ``str`` (a stream's own field)."""
    return COLUMN_DTYPES.get(name, "str")


def typed(df: pd.DataFrame, names: Iterable[str] | None = None) -> pd.DataFrame:
    """``df`` with the columns ``names`` (default: every column the table names) cast to
    their dtype, in place; ``''`` in a text column becomes NA. A column already of its dtype is
    kept as it is (a category keeps its categories' order); new categories are sorted."""
    for name in list(df.columns if names is None else names):
        dtype = COLUMN_DTYPES.get(name)
        if dtype is None or name not in df.columns or dtype == "object":
            continue
        column: Any = df[name]
        if str(column.dtype) == dtype:
            if dtype == "str" and (column == "").any():
                df[name] = column.mask(column == "")
            continue
        if dtype in ("str", "category"):
            values = column.astype("object")
            column = values.where(values.notna() & (values != ""), None).astype("str")
            if dtype == "category":
                column = column.astype(pd.CategoricalDtype(sorted(set(column.dropna()))))
        elif dtype == TIME:
            if not str(column.dtype).startswith("datetime64"):
                column = pd.to_datetime(column, utc=True, format="ISO8601")
            column = column.astype(TIME)
        elif dtype == DURATION:
            column = pd.to_timedelta(column).astype(DURATION)
        else:
            column = column.astype(dtype)
        df[name] = column
    return df
