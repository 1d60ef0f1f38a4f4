"""Launch shape of the Toeplitz-attention kernels: a block of query (or key) tokens per program, the other side
streamed in blocks, as flash attention's tiles."""
from __future__ import annotations

import torch

from ..utils import cdiv, multiprocessor_count, padded

# The forward kernel (also the backward's dq): 128 query tokens per program, key tokens streamed 32 at a time, three
# stages. At H3-T's 224 px shape (batch 256, 197 tokens, 3 heads of 64, bf16) on an H100 this ran 75 us a call
# (triton.testing.do_bench median) against 118 us for the 64 x 64 tiles of two stages that the gradient kernels keep,
# the fastest of 24 shapes (64 / 128 query tokens, 32 / 64 / 128 key tokens, 4 / 8 warps, 2 / 3 stages); H3-T's
# inference step, replayed from a CUDA graph, took 4.73 against 5.25 ms (softmax twin 3.93 ms).
FWD_BLOCK_T = 128
FWD_BLOCK_S = 32
FWD_NUM_WARPS = 4
FWD_NUM_STAGES = 3

BLOCK_T = 64  # key-gradient programs: query tokens per step, and per lag-gradient tile
BLOCK_S = 64  # key tokens per program (dk, dv) and per lag-gradient tile
NUM_WARPS = 4
NUM_STAGES = 2


def block_d(head_dim: int) -> int:
    """The head dim as a tile dim: the next power of two, at least 16."""
    return padded(head_dim)


def dlags_splits(batch: int, tiles: int, device: torch.device) -> int:
    """Programs per (head, query block, key block) tile of the lag gradient, each summing every splits-th image: enough
    to give each multiprocessor about four programs (H3-T at 224 px has only 3 x 4 x 4 tiles, against 132 of them on
    an H100 / H200). Two under the interpreter, so the tests run the split path."""
    if device.type != "cuda":
        return min(batch, 2)
    return max(1, min(batch, cdiv(4 * multiprocessor_count(device), tiles)))
