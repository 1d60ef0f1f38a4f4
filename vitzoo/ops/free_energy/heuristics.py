"""Launch shape of FEM's output kernels: one program per block of 64 tokens and one head."""
from __future__ import annotations

from ..utils import padded

BLOCK_T = 64
NUM_WARPS = 4


def block_d(value_head_dim: int) -> int:
    """The value head dim as a tile dim: the next power of two, at least 16."""
    return padded(value_head_dim)
