"""Launch shape of the Toeplitz-attention kernels: a block of query (or key) tokens per program, the other side
streamed in blocks, as flash attention's tiles."""
from __future__ import annotations

import torch

from ..utils import cdiv, multiprocessor_count, padded

BLOCK_T = 64  # query tokens per program (forward, dq) and per lag-gradient tile
BLOCK_S = 64  # key tokens per step (forward, dq) and per program (dk, dv)
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
