"""Launch shape of the normalise-and-erase kernel: tiles of up to 2048 pixels of one image plane."""
from __future__ import annotations

from ..utils import next_power_of_2

NUM_WARPS = 4
MAX_BLOCK = 2048


def block(pixels: int) -> int:
    """Pixels per program: the plane's pixels rounded up to a power of two, at most :data:`MAX_BLOCK`."""
    return min(MAX_BLOCK, max(16, next_power_of_2(pixels)))
