"""Launch shape of the local-convolution kernels: a band of grid rows by a block of columns by a block of channels
per program, walked row by row.

Bands of 8 rows split a 14 x 14 grid (224 px) in two, so DeiT-T's batch of 256 makes thousands of programs, and keep
the halo (the K - 1 rows a band reads above and below it) a small part of what it reads. Columns go in blocks of up
to 32 (the whole padded row on grids up to 32 wide), channels in blocks of up to 64.
"""
from __future__ import annotations

ROWS = 8  # grid rows per program
NUM_WARPS = 4


def block_w(grid_w: int) -> int:
    """Columns per program: the grid width padded to a power of two, at least 8 and at most 32."""
    return min(32, max(8, 1 << (grid_w - 1).bit_length()))


def block_c(channels: int) -> int:
    """Channels per program: 64, or the whole (power-of-two padded, at least 16) channel dim when smaller."""
    return 64 if channels >= 64 else max(16, 1 << (channels - 1).bit_length())
