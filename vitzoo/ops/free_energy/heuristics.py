"""Launch shape of FEM's kernels: tokens in blocks of 64, a head's value channels in one tile.

The values' forward gives each (batch, head) a program that walks its tokens twice; below ``VALUES_SPLIT_BELOW``
programs per multiprocessor (small batches: FEM-T's batch-1 forward at 1024 px ran three programs), for sequences of
at least ``VALUES_SPLIT_MIN_BLOCKS`` token blocks (512 px and up), it runs as two launches over chunks of whole token
blocks, about ``VALUES_PROGRAMS_PER_SM`` programs per multiprocessor, at most ``VALUES_MAX_CHUNKS`` chunks (the
second launch combines their maxima in one tile); shorter walks keep the one launch. Chosen by arithmetic, not timed
on a GPU yet.
"""
from __future__ import annotations

import torch

from ..utils import padded, token_chunks

BLOCK_T = 64
VALUES_NUM_WARPS = 4
VALUES_SPLIT_BELOW = 1
VALUES_PROGRAMS_PER_SM = 4
VALUES_MAX_CHUNKS = 64
VALUES_SPLIT_MIN_BLOCKS = 16
_INTERPRETER_PROGRAMS = 4  # the "GPU size" assumed under TRITON_INTERPRET=1 (CPU tests)
# The output kernels hold about fifteen (64, Dv) fp32 tiles live: compiled for sm_90 (benchmarks/compile_sm90.py),
# 4 warps need 157 registers forward and 206 backward, 8 warps 103 and 158 (none spill): 8 spreads the tiles over more
# threads and so keeps more of them resident per SM.
MIX_NUM_WARPS = 8


def block_d(value_head_dim: int) -> int:
    """The value head dim as a tile dim: the next power of two, at least 16."""
    return padded(value_head_dim)


def values_chunks(bh: int, n: int, device: torch.device) -> tuple[int, int]:
    """(number of chunks, tokens per chunk) of the values' forward for ``bh`` (batch, head) sequences of ``n``
    tokens: one chunk of every token while the sequences fill the GPU."""
    return token_chunks(bh, n, BLOCK_T, device, split_below=VALUES_SPLIT_BELOW,
                        programs_per_sm=VALUES_PROGRAMS_PER_SM, interpreter_programs=_INTERPRETER_PROGRAMS,
                        max_chunks=VALUES_MAX_CHUNKS, min_blocks=VALUES_SPLIT_MIN_BLOCKS)
