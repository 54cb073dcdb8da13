"""Signals that ask a loop to stop: one mechanism for the consumer and the CLI's replay."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["signals_set"]


@contextmanager
def signals_set(event: threading.Event, *signals: signal.Signals) -> Iterator[None]:
    """While inside, each of ``signals`` sets ``event`` instead of its usual action; the
    previous handlers are put back on exit. Outside the main thread, which alone may install
    signal handlers, it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Not event.set() here: the handler runs in the main thread, which may be inside
        # event.wait() holding the event's lock, and set() would then wait for it forever.
        threading.Thread(target=event.set, name="streamlab-signal").start()

    previous = {sig: signal.signal(sig, on_signal) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            # None: installed outside Python, it cannot be put back; Python's own default then.
            default = signal.default_int_handler if sig is signal.SIGINT else signal.SIG_DFL
            signal.signal(sig, default if handler is None else handler)
