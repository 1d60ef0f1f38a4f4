"""Launch shape of FEM's kernels: tokens in blocks of 64, a head's value channels in one tile."""
from __future__ import annotations

from ..utils import padded

BLOCK_T = 64
NUM_WARPS = 4


def block_d(value_head_dim: int) -> int:
    """The value head dim as a tile dim: the next power of two, at least 16."""
    return padded(value_head_dim)
