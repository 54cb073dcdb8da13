"""Replay: send dead-lettered events back to their stream, atomically and exactly once.

The flow is select, look, (try), replay, follow up::

    sel = select_dlq(client, "{webhooks}", error_type=["TimeoutError"])   # what is there
    try_handler(fixed_handler, sel)                  # does the fix work? (writes nothing)
    replay_dlq(client, "{webhooks}", sel, dry_run=True)                      # what would happen
    report = replay_dlq(client, "{webhooks}", sel)                           # do it
    replay_outcome(client, "{webhooks}", report.replay_id)                   # did it work?

How a replay is made safe
-------------------------
Each event is replayed by one Lua script (``lua/replay.lua``) that checks the DLQ entry still
exists (and is not marked replayed), XDELs it (or marks it) and XADDs the event to the target,
all in one step. Two concurrent replays of one selection therefore inject each event once: the
script is the arbiter, the second caller finds the entry gone and reports it as skipped. A
replay killed half-way leaves every event either replayed (and gone from the DLQ) or still in
the DLQ, so running it again continues where it stopped. Script calls are pipelined in
batches; nothing is done one round trip per entry.

What is written
---------------
The original entry fields, byte for byte and in their order, minus the ``dlq_*`` failure
fields and any earlier replay marker; ``retry_count`` set to ``0`` (added when missing); and
the replay marker `streamlab.records.ReplayMarker`, fields `streamlab.records.REPLAY_FIELDS`:
``streamlab:replay_id`` (the run), ``streamlab:replay_of`` (the DLQ entry id),
``streamlab:replay_count`` (the previous count + 1, so events cycling between the DLQ and the
stream show up), ``streamlab:replayed_at`` (RFC 3339) and ``streamlab:replay_group`` (by
default the group the event failed in, so other groups on the stream ack and skip it: a
failure is retried for its own group only; ``for_group=None`` writes '' and every group sees
it). Consumers recognise the marker only as a whole and well formed; a producer's own
``replay_group`` field is data.

Bookkeeping keys (derived from the DLQ name, so they share its hash tag on Redis Cluster)
-------------------------------------------------------------------------------------------
- ``<dlq>:replayed`` (`replayed_key`): hash, DLQ id -> ``replay_id\\nnew id\\ntarget``. Stream
  entries cannot be edited, so with ``keep_in_dlq=True`` this marks an entry as replayed; every
  replay consults it, so a kept entry is never injected twice.
- ``<dlq>:replay:<replay_id>`` (`ledger_key`): hash of one run, DLQ id ->
  ``new id\\nreplay group\\ntarget``, expiring after ``ledger_ttl`` (30 days by default).
  `replay_outcome` reads it, and a rerun with the same ``replay_id`` reports the events it
  already replayed as such.

Markers of kept entries outlive the entries when the DLQ is trimmed later: a hash field each,
harmless (DLQ ids are never reused), and removable with HDEL or by deleting the hash once the
DLQ is empty.
"""

from __future__ import annotations

from streamlab.keys import ledger_key, replayed_key
from streamlab.replay.outcome import replay_outcome
from streamlab.replay.run import (
    DEFAULT_LEDGER_TTL,
    FAILED_GROUP,
    Cancel,
    FailedGroup,
    ReplayReport,
    replay_dlq,
)
from streamlab.replay.selection import ReplaySelection, select_dlq
from streamlab.replay.trial import try_handler

__all__ = [
    "DEFAULT_LEDGER_TTL",
    "FAILED_GROUP",
    "Cancel",
    "FailedGroup",
    "ReplayReport",
    "ReplaySelection",
    "ledger_key",
    "replay_dlq",
    "replay_outcome",
    "replayed_key",
    "select_dlq",
    "try_handler",
]
