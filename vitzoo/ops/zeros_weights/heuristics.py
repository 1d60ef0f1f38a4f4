"""Launch shape of ZeroS's weighting kernels: one program per (batch, head), tokens in blocks of 64; the forward
split over chunks of tokens where those programs would leave multiprocessors idle.

A (batch, head) program walks its tokens three times, one block after another: ZeroS-T's batch-1 forward at 1024 px
(three heads of 4,097 tokens) ran three programs on the whole GPU. Below ``SPLIT_BELOW`` programs per multiprocessor,
for sequences of at least ``SPLIT_MIN_BLOCKS`` token blocks (512 px and up), the forward runs as three launches over
chunks of whole token blocks, about ``PROGRAMS_PER_SM`` programs per multiprocessor each (at most ``BLOCK_N`` chunks,
which the last launch combines in one tile); shorter walks keep the one launch, which costs an eager call less host
time than two more. Chosen by arithmetic, not timed on a GPU yet.
"""
from __future__ import annotations

import torch

from ..utils import padded, token_chunks

BLOCK_N = 64
NUM_WARPS = 4
SPLIT_BELOW = 1  # (batch, head) programs per multiprocessor under which the forward splits the tokens
PROGRAMS_PER_SM = 4
SPLIT_MIN_BLOCKS = 16
_INTERPRETER_PROGRAMS = 4  # the "GPU size" assumed under TRITON_INTERPRET=1 (CPU tests), as linear attention's


def block_d(head_dim: int) -> int:
    """The head dim as a tile dim: the next power of two, at least 16."""
    return padded(head_dim)


def forward_chunks(bh: int, n: int, device: torch.device) -> tuple[int, int]:
    """(number of chunks, tokens per chunk) of the forward for ``bh`` (batch, head) sequences of ``n`` tokens: one
    chunk of every token while the sequences fill the GPU."""
    return token_chunks(bh, n, BLOCK_N, device, split_below=SPLIT_BELOW, programs_per_sm=PROGRAMS_PER_SM,
                        interpreter_programs=_INTERPRETER_PROGRAMS, max_chunks=BLOCK_N, min_blocks=SPLIT_MIN_BLOCKS)
