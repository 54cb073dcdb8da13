from __future__ import annotations

from collections.abc import Iterator

import pytest

from faults.common import reap


@pytest.fixture(autouse=True)
def reap_workers() -> Iterator[None]:
    """Kill the worker processes a failed scenario left running."""
    yield
    reap()
