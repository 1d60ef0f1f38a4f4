"""Launch shape of the local-convolution kernels: a tile of grid positions by a block of channels per program.

The forward kernel (also the backward's dx and SiLU-gradient passes) takes 32 positions: on the H200, DeltaNet-T's
576-channel SiLU convolution (batch 256, bf16) ran 156 us a call at 32 against 212 us at 64, where the 64 x 64 tile
spills registers. The dw kernel keeps 64: each tile writes a row of partial sums that the host adds up, and at 32
its forward+backward total rose from 860 to 1,103 us in the same measurement.
"""
from __future__ import annotations

FORWARD_BLOCK_P = 32  # grid positions per program of the forward kernel
DW_BLOCK_P = 64  # grid positions per program of the dw kernel
NUM_WARPS = 4


def block_c(channels: int) -> int:
    """Channels per program: 64, or the whole (power-of-two padded, at least 16) channel dim when smaller."""
    return 64 if channels >= 64 else max(16, 1 << (channels - 1).bit_length())
