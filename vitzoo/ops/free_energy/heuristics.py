"""Launch shape of FEM's kernels: tokens in blocks of 64, a head's value channels in one tile."""
from __future__ import annotations

from ..utils import padded

BLOCK_T = 64
VALUES_NUM_WARPS = 4
# The output kernels hold about fifteen (64, Dv) fp32 tiles live: compiled for sm_90 (benchmarks/compile_sm90.py),
# 4 warps need 157 registers forward and 206 backward, 8 warps 103 and 158 (none spill): 8 spreads the tiles over more
# threads and so keeps more of them resident per SM.
MIX_NUM_WARPS = 8


def block_d(value_head_dim: int) -> int:
    """The value head dim as a tile dim: the next power of two, at least 16."""
    return padded(value_head_dim)
