"""Launch shape of ZeroS's weighting kernels: one program per (batch, head), tokens in blocks of 64."""
from __future__ import annotations

from ..utils import padded

BLOCK_N = 64
NUM_WARPS = 4


def block_d(head_dim: int) -> int:
    """The head dim as a tile dim: the next power of two, at least 16."""
    return padded(head_dim)
