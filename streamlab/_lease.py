"""The consumer's watchdog: it keeps a long batch's messages leased and stops a hung handler.

One thread per running consumer does three things while a batch is being handled:

- **Renewal.** Every ``claim_min_idle / 3`` it resets the idle time of the batch's messages
  with ``XCLAIM <group> <self> <min-idle> <ids> JUSTID``, so that no other consumer can
  reclaim them while this worker is alive and working, as BullMQ extends its locks and SQS
  extends a visibility timeout. ``JUSTID`` leaves the delivery counter (the attempt count)
  alone; ``min-idle`` is the time since this worker last reset the messages, less a
  millisecond, so a message another consumer took over meanwhile (its idle time restarted
  then) is not taken back: it is theirs, and is dropped from the lease. (Another consumer
  can take a message over only once its idle time reached ``claim_min_idle``, so the one
  window left is a renewal whose reply arrives ``claim_min_idle`` late.) While Redis cannot
  be reached the renewals fail, and after ``claim_min_idle`` the batch may be reclaimed
  elsewhere: handled twice, at least once, never lost.
- **Handler time limit.** A handler running past ``handler_timeout`` is interrupted.
- **Shutdown grace.** Once the stop event is set, a running handler gets ``shutdown_grace``
  to finish; then it is interrupted and what it held is left pending.

Interrupting is done as dramatiq's time-limit middleware does it: an exception raised in the
handler's thread. In the main thread (a worker that handles signals) the watchdog sends
SIGALRM and the signal handler raises, which also breaks a ``time.sleep`` or a blocking socket
read; in any other thread it is an asynchronous exception (``PyThreadState_SetAsyncExc``),
which takes effect only when the handler runs Python code again: a handler blocked in C code
is interrupted only when that call returns.
"""

from __future__ import annotations

import ctypes
import enum
import logging
import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

import redis

from streamlab.events import StreamMessage
from streamlab.records import claimed_ids

__all__ = ["Interrupted", "Reason", "Watchdog"]

log = logging.getLogger("streamlab.consumer")
# The watchdog's longest tick: a handler is interrupted at most this late (it polls the stop
# event, which cannot wake it).
STOP_POLL = 0.1
# The shortest renewal period, whatever claim_min_idle is.
_MIN_RENEW = 0.01


class Reason(enum.Enum):
    """Why a handler was interrupted."""

    TIMEOUT = "timeout"
    SHUTDOWN = "shutdown"


class Interrupted(BaseException):
    """Raised in a handler's thread to stop it. Not an `Exception`, so that a handler's own
    ``except Exception`` does not swallow it (dramatiq's ``TimeLimitExceeded`` is the same)."""


def _item_id(item: object) -> str:
    if isinstance(item, StreamMessage):
        return item.id
    entry_id = item[0]  # type: ignore[index]  # a raw entry: (id, fields)
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


class Watchdog:
    """Renews the batch in hand and interrupts a handler that runs too long; see the module.

    The consumer calls `hold` when a batch arrives and `release` before settling it (release
    waits for a renewal in flight, so that settling never races one), and `arm` / `disarm`
    around each handler call. ``use_signal`` (only from the main thread) interrupts by SIGALRM.
    """

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        group: str,
        consumer: str,
        *,
        claim_min_idle: float,
        handler_timeout: float | None,
        shutdown_grace: float,
        stop: threading.Event,
        use_signal: bool = False,
    ) -> None:
        self._redis = client
        self._key = (stream, group, consumer)
        self._interval = max(claim_min_idle / 3, _MIN_RENEW)
        # How often the thread looks at the batch, the handler and the stop event.
        self._tick = max(min(STOP_POLL, self._interval, (handler_timeout or 1) / 4), _MIN_RENEW)
        self._timeout = handler_timeout
        self._grace = shutdown_grace
        self._stop = stop
        # Held while the thread works (a renewal, an interruption) and by `release`, so that
        # settling never races a renewal; the per-call path (arm, disarm) takes no lock.
        self._lock = threading.Lock()
        self._closed = threading.Event()
        # The batch in hand: items, and when each id's idle time was last reset (None: ids
        # not read yet; they all start at the hold stamp).
        self._batch: Sequence[object] | None = None
        self._held_at = 0.0
        self._stamps: dict[str, float] | None = None
        self._renew_at = float("inf")
        # The handler running: its token and start time; `_fired` the token interrupted.
        self._token = 0
        self._armed: int | None = None
        self._started = 0.0
        self._fired: int | None = None
        self.reason: Reason | None = None
        self._stop_seen: float | None = None
        self._thread_id = 0
        self._signal = use_signal and threading.current_thread() is threading.main_thread()
        self._previous: Any = None
        self._alarm_sent = False
        self._thread = threading.Thread(target=self._loop, name="streamlab-watchdog", daemon=True)
        self.renewals = 0

    # -- lifetime ----------------------------------------------------------------------------

    def start(self) -> Watchdog:
        if self._signal:
            self._previous = signal.signal(signal.SIGALRM, self._on_alarm)
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()
        self._thread.join()
        if self._signal:
            previous = self._previous
            signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)

    # -- the batch ---------------------------------------------------------------------------

    def hold(self, batch: Sequence[object]) -> None:
        """Lease ``batch`` (messages or raw entries, as read) until `release`.

        Call it after the read returned: the stamp taken here is no earlier than the moment
        Redis delivered the batch, so the first renewal's min-idle never exceeds the real idle.
        """
        with self._lock:
            self._batch = batch
            self._stamps = None
            self._held_at = time.monotonic()
            self._renew_at = self._held_at + self._interval

    def release(self) -> dict[str, float]:
        """End the lease (after a renewal in flight); when each renewed id was last reset."""
        with self._lock:
            stamps = self._stamps or {}
            self._batch = None
            self._stamps = None
            self._renew_at = float("inf")
            return stamps

    def grace_over(self) -> bool:
        """Whether a stop was asked more than ``shutdown_grace`` ago: take no more messages."""
        if not self._stop.is_set():
            return False
        return time.monotonic() >= self._stop_time() + self._grace

    def _stop_time(self) -> float:
        if self._stop_seen is None:
            self._stop_seen = time.monotonic()
        return self._stop_seen

    # -- one handler call --------------------------------------------------------------------

    def arm(self, started: float) -> None:
        """Start a handler call begun at ``started`` (`time.monotonic`)."""
        # Start time before token: the thread reads the token first, then the start time.
        self.reason = None
        self._thread_id = threading.get_ident()
        self._started = started
        self._token += 1
        self._armed = self._token

    def disarm(self) -> None:
        """End the handler call; an interruption not delivered yet is cancelled.

        Lock-free unless this call was interrupted: the thread marks `_fired` before it
        checks `_armed`, so if it saw this call still armed, we see the mark here and wait
        for it (the lock) before cancelling what it sent.
        """
        token = self._armed
        self._armed = None
        if token is not None and self._fired == token and not self._signal:
            with self._lock:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread_id), None)

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread between two bytecodes: the handler call is still armed, or
        # the signal is late and ignored.
        if self._alarm_sent:
            self._alarm_sent = False
            if self._armed is not None and self._fired == self._armed:
                raise Interrupted(self.reason)
            return
        previous = self._previous
        if callable(previous):
            previous(signum, frame)

    # -- the thread --------------------------------------------------------------------------

    def _loop(self) -> None:
        # A fixed tick, not a wake-up per batch or per handler call: the hot path then takes
        # an uncontended lock per call and never hands the GIL to this thread.
        while not self._closed.wait(self._tick):
            with self._lock:
                now = time.monotonic()
                if self._batch is not None and now >= self._renew_at:
                    self._renew()
                    self._renew_at = time.monotonic() + self._interval
                armed = self._armed
                if armed is not None and self._fired != armed:
                    self._check_handler(armed, now)

    def _check_handler(self, token: int, now: float) -> None:
        """Interrupt handler call ``token`` if it is past its time limit or the grace."""
        deadline, reason = float("inf"), Reason.TIMEOUT
        if self._timeout is not None:
            deadline = self._started + self._timeout
        if self._stop.is_set() and self._stop_time() + self._grace < deadline:
            deadline, reason = self._stop_time() + self._grace, Reason.SHUTDOWN
        if now < deadline:
            return
        self.reason = reason
        self._fired = token  # before the check below: see `disarm`
        if self._armed != token:
            return  # it returned meanwhile
        log.warning("handler interrupted after %.1f s (%s)", now - self._started, reason.value)
        if self._signal:
            self._alarm_sent = True
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGALRM)
        else:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self._thread_id), ctypes.py_object(Interrupted)
            )

    def _renew(self) -> None:
        """Reset the idle time of the batch's messages that are still this consumer's."""
        assert self._batch is not None
        if self._stamps is None:
            self._stamps = dict.fromkeys(map(_item_id, self._batch), self._held_at)
        stream, group, consumer = self._key
        by_stamp: dict[float, list[str]] = {}
        for entry_id, stamp in self._stamps.items():
            by_stamp.setdefault(stamp, []).append(entry_id)
        for stamp, ids in by_stamp.items():
            # Our delivery or last renewal was at least this long ago on the server's clock;
            # a message with a younger delivery was taken over by another consumer.
            min_idle = max(int((time.monotonic() - stamp) * 1000) - 1, 0)
            try:
                claim: list[Any] = list(ids)
                kept: list[Any] = self._redis.xclaim(
                    stream, group, consumer, min_idle, claim, justid=True
                )
            except Exception as exc:  # keep the thread alive: the next tick tries again
                log.warning("renewing %d messages failed (%s)", len(ids), type(exc).__name__)
                continue
            renewed = time.monotonic()
            self.renewals += 1
            kept_ids = set(claimed_ids(kept))
            for entry_id in ids:
                if entry_id in kept_ids:
                    self._stamps[entry_id] = renewed
                else:
                    # Taken over by another consumer, acked, or deleted: not ours to renew.
                    del self._stamps[entry_id]
            if len(kept_ids) < len(ids):
                log.warning(
                    "%d of %d messages in hand are no longer this consumer's",
                    len(ids) - len(kept_ids),
                    len(ids),
                )
