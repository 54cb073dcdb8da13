"""Progress bars for long exports and replays: tqdm.auto, imported only when one is shown."""

from __future__ import annotations

import sys
import time
from typing import Any, cast

from streamlab.errors import MissingDependencyError

__all__ = ["NoProgress", "in_notebook", "progress_bar"]


class NoProgress:
    """Stands in for a bar when none is shown."""

    total: int | None = None

    def update(self, n: int = 1) -> None:
        """Ignore progress."""

    def close(self) -> None:
        """Nothing to close."""


def in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython is then already imported; never import it)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


class _Bar:
    """A tqdm bar that, once closed, leaves one plain line behind.

    A notebook's bar is a widget, which a saved notebook does not keep, and a terminal's bar
    is redrawn in place: the summary line (``replay: 1,200 events in 0.8 s``) is what survives
    in both (on stdout in a notebook, on stderr next to the bar in a terminal).
    """

    def __init__(self, bar: Any, desc: str, unit: str) -> None:
        self._bar, self._desc, self._unit = bar, desc, unit
        self._start = time.monotonic()
        self._closed = False

    @property
    def total(self) -> int | None:
        """The bar's total, when known."""
        return cast("int | None", self._bar.total)

    @total.setter
    def total(self, value: int | None) -> None:
        self._bar.total = value
        self._bar.refresh()

    def update(self, n: int = 1) -> None:
        """Advance by ``n``."""
        self._bar.update(n)

    def close(self) -> None:
        """Remove the bar and print the summary line (once)."""
        if self._closed:
            return
        self._closed = True
        self._bar.close()
        done = int(self._bar.n)
        of = f" of {self._bar.total:,}" if self._bar.total not in (None, done) else ""
        took = time.monotonic() - self._start
        # In a notebook stdout, a plain output line; in a terminal stderr, beside the bar.
        out = sys.stdout if in_notebook() else sys.stderr
        print(f"{self._desc}: {done:,}{of} {self._unit} in {took:.1f} s", file=out)


def progress_bar(
    progress: bool | None, total: int | None, desc: str, *, unit: str = "entries"
) -> _Bar | NoProgress:
    """A tqdm.auto bar when ``progress`` is True, or None and running in a notebook.

    Closing it leaves a summary line. ``progress=True`` without tqdm installed raises
    `MissingDependencyError`; the automatic notebook bar is simply left out.
    """
    wanted = in_notebook() if progress is None else progress
    if not wanted:
        return NoProgress()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if progress:
            raise MissingDependencyError(
                "progress bars need tqdm: pip install 'streamlab[notebook]'"
            ) from None
        return NoProgress()
    return _Bar(tqdm(total=total, desc=desc, unit=f" {unit}", leave=False), desc, unit)
