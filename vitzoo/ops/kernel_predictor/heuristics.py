"""Launch shape of the local-kernel predictor.

The token sums: (image, 64-channel block, span of 64 tokens) programs reading blocks of 64 tokens, four spans at
224 px and 65 at 1024 px. On an H100 (triton.testing.do_bench medians, InLine-T's 192 channels in bf16) this ran 16.4
us a call at 224 px (batch 256) and 15.4 us at 1024 px (batch 12), the fastest of 24 shapes at both (spans of 64 /
128 / 256 tokens, blocks of 32 / 64 tokens and 64 / 128 / 256 channels, 4 / 8 warps), against 22.8 and 20.5 us for
spans of 256 in blocks of 32. One program per image and channel block walking all tokens took InLine-T's 1024 px
forward 5.64 against 4.39 ms with PyTorch's mean.

The MLP: (block of 16 images, group) programs, the second layer's outputs in blocks of 64 (18.2 us a call at
InLine-T's 224 px shape in the H100 profile of the model). A program per block of outputs as well, recomputing the
first layer in each (432 programs there instead of 48), ran 27.5-29.3 us a call in do_bench at its best shapes.

The backward: the MLP's (block of 16 images, group) programs and output blocks, at 8 warps: compiled for sm_90
(``python benchmarks/compile_sm90.py --family shell``, InLine-T's groups of 32 channels) it needs 188 registers
without spilling, where 4 warps spill 212 bytes at 255. Not timed on a GPU yet.
"""
from __future__ import annotations

from ..utils import padded

MEAN_SPAN = 64  # a multiple of MEAN_BLOCK_N
MEAN_BLOCK_N = 64
MEAN_BLOCK_C = 64
MLP_BLOCK_B = 16
MLP_BLOCK_J = 64
NUM_WARPS = 4
BWD_NUM_WARPS = 8


def block_width(width: int) -> int:
    """A group's channels as a tile dim: the next power of two, at least 16 (the tensor cores' smallest K)."""
    return padded(width)
