"""Launch shape of the SSM-kernel kernels: one program per (direction, head), lags in blocks of 64, all modes in one
tile."""
from __future__ import annotations

from ..utils import padded

BLOCK_L = 64
NUM_WARPS = 4


def block_m(modes: int) -> int:
    """The modes as a tile dim: the next power of two, at least 16."""
    return padded(modes)
