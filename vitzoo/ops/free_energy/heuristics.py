"""Launch shape of FEM's kernels: tokens in blocks of 64, a head's value channels in one tile."""
from __future__ import annotations

from ..utils import padded

BLOCK_T = 64
VALUES_NUM_WARPS = 4
# The output kernels hold about fifteen (64, Dv) fp32 tiles live: compiled for sm_90 (ptxas -v), 4 warps took 166
# registers forward and spilled at 255 backward; 8 warps take 80 and 122, no spills.
MIX_NUM_WARPS = 8


def block_d(value_head_dim: int) -> int:
    """The value head dim as a tile dim: the next power of two, at least 16."""
    return padded(value_head_dim)
