"""Launch shape of the resized-crop kernel: tiles of up to 1024 output pixels of one image (all channels)."""
from __future__ import annotations

from ..utils import next_power_of_2

NUM_WARPS = 4
MAX_BLOCK = 1024


def block(pixels: int) -> int:
    """Output pixels per program: the output's pixels rounded up to a power of two, at most :data:`MAX_BLOCK`."""
    return min(MAX_BLOCK, max(16, next_power_of_2(pixels)))
