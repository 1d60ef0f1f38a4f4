"""Launch shape of the BatchNorm-GELU-add kernel: tiles of rows by up to 64 channels, about 4k elements a program."""
from __future__ import annotations

from ..utils import next_power_of_2

NUM_WARPS = 4
TILE_ELEMENTS = 4096


def block_c(channels: int) -> int:
    """Channels per program: up to 64 (heads of 64 channels fill whole blocks)."""
    return min(64, max(16, next_power_of_2(channels)))


def block_rows(channels: int) -> int:
    """Rows per program, so that a program covers about ``TILE_ELEMENTS`` elements."""
    return TILE_ELEMENTS // block_c(channels)
