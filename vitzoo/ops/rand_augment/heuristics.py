"""Launch shape of the RandAugment layer kernel: tiles of up to 1024 pixels of one image (all three channels)."""
from __future__ import annotations

from ..utils import next_power_of_2

NUM_WARPS = 4
MAX_BLOCK = 1024


def block(pixels: int) -> int:
    """Pixels per program: the image's pixels rounded up to a power of two, at most :data:`MAX_BLOCK`."""
    return min(MAX_BLOCK, max(16, next_power_of_2(pixels)))
