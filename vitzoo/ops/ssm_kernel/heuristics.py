"""Launch shape of the SSM-kernel kernels: one program per (direction, head), lags in blocks of 64, all modes in one
tile; the Toeplitz lags' forward one program per (head, block of lags), both directions in each."""
from __future__ import annotations

from ..utils import padded

BLOCK_L = 64
# compiled for sm_90 (ptxas -v), 4 warps spilled in the backward (128 registers); 8 warps take 100, no spills
NUM_WARPS = 8


def block_m(modes: int) -> int:
    """The modes as a tile dim: the next power of two, at least 16."""
    return padded(modes)
