"""Trying a handler on selected DLQ entries in-process, writing nothing: `try_handler`."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from streamlab.errors import ArgumentError
from streamlab.events import StreamMessage, decode_message
from streamlab.replay.selection import ReplaySelection, check_selection

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["try_handler"]


def try_handler(
    handler: Callable[[StreamMessage], Any], selection: ReplaySelection
) -> pd.DataFrame:
    """Run ``handler`` in-process on each selected event, as a replay would deliver it.

    Nothing is written to Redis. The handler gets a `StreamMessage` of the fields a replay
    would write (``dlq_*`` dropped, ``retry_count`` 0, no replay marker), with ``stream`` the
    source stream and ``id`` the DLQ entry id (the replayed entry has no id yet). An entry that
    does not decode is not passed to the handler (the consumer would dead-letter it at once):
    its row says ``error`` with ``error_type`` ``DecodeError``.

    Returns one row per entry: ``id`` (the DLQ id), ``event_type``, ``outcome`` (``ok`` /
    ``error``), ``error``, ``error_type`` (NA when it went well) and ``duration``
    (``timedelta64[ms]``), as a `streamlab.frames.Table` (blanks shown blank).
    """
    if not callable(handler):
        raise ArgumentError(f"handler: expected a function of a StreamMessage, got {handler!r}")
    check_selection(selection)
    import pandas as pd

    from streamlab.frames._display import Table
    from streamlab.frames.columns import typed

    rows: dict[str, list[Any]] = {
        k: [] for k in ("id", "event_type", "outcome", "error", "error_type", "duration")
    }
    for entry in selection._entries:
        flat = entry.original()
        source = entry.text(b"dlq_source_stream") or selection.stream
        msg = decode_message(source, entry.id, dict(zip(flat[::2], flat[1::2], strict=True)))
        error: BaseException | None = msg.decode_error
        began = time.perf_counter()
        if error is None:
            try:
                handler(msg)
            except Exception as exc:
                error = exc
        took = time.perf_counter() - began
        rows["id"].append(entry.id)
        rows["event_type"].append(entry.event_type)
        rows["outcome"].append("ok" if error is None else "error")
        rows["error"].append(None if error is None else str(error))
        rows["error_type"].append(None if error is None else type(error).__name__)
        rows["duration"].append(timedelta(seconds=took))
    frame = pd.DataFrame(rows)
    frame["outcome"] = pd.Categorical(frame["outcome"], categories=["ok", "error"])
    return Table(typed(frame))
