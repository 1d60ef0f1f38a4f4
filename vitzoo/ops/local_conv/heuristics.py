"""Launch shape of the local-convolution kernels: a tile of grid positions by a block of channels per program."""
from __future__ import annotations

BLOCK_P = 64  # grid positions per program
NUM_WARPS = 4


def block_c(channels: int) -> int:
    """Channels per program: 64, or the whole (power-of-two padded, at least 16) channel dim when smaller."""
    return 64 if channels >= 64 else max(16, 1 << (channels - 1).bit_length())
