"""Progress bars for long exports and replays: tqdm.auto, imported only when one is shown."""

from __future__ import annotations

import sys
from typing import Any

from streamlab.errors import MissingDependencyError

__all__ = ["NoProgress", "in_notebook", "progress_bar"]


class NoProgress:
    """Stands in for a bar when none is shown."""

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


def progress_bar(
    progress: bool | None, total: int | None, desc: str, *, unit: str = "entries"
) -> Any:
    """A tqdm.auto bar when ``progress`` is True, or None and running in a notebook.

    ``progress=True`` without tqdm installed raises `MissingDependencyError`; the automatic
    notebook bar is simply left out.
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
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, leave=False)
