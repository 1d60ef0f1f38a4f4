"""Launch constants of a heuristics module (such as the delta rule's ``NUM_WARPS``) changed for the duration of a
block, for the benchmarks' variant sweeps."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any


@contextlib.contextmanager
def overridden(module: ModuleType, overrides: dict[str, Any]) -> Iterator[None]:
    """Set ``module``'s attributes named in ``overrides`` inside the block and restore them after it."""
    saved = {name: getattr(module, name) for name in overrides}
    for name, value in overrides.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)
