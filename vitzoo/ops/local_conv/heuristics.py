"""Launch shape of the local-convolution kernels.

Forward (also dx and the SiLU gradient): a band of grid rows by 16 columns by up to 64 channels per program, 8 warps,
walked row by row; the layers pass channels-last weights. DeltaNet-T's 576-channel SiLU convolution (batch 256 on the
14 x 14 grid, bf16) ran 95 us a call on the H200 with the whole grid as one band, against 111 us in bands of 8 rows,
121 us for the 32-position tiles this kernel replaced and 199 us with (C, K, K) weights; 98 against 123 us (bands of
8, 4 warps) on an H100. On the 64 x 64 grid (1024 px, batch 16) bands of 8 rows ran 115 us against 124 us for the
tiles (H200). InLine-T's 192-channel convolution (per-image kernels, with the residual) ran 48 against 52 us at
224 px; at 1024 px its best was 4 warps (55 against 59 us, tiles 59 us). Files: ``benchmarks/results/local_conv/``
(``h200.json`` the A/B against the previous kernel, ``h100.json`` from ``benchmarks/local_conv.py``).

dw: 64 grid positions by up to 64 channels per program, one row of partial sums per tap; a row-band form of it ran
1.8-6x slower on the H200.
"""
from __future__ import annotations

from ..utils import cdiv

MAX_BAND_ROWS = 32  # grids up to this many rows are one band; taller ones go in equal bands of at most this many
NUM_WARPS = 4
DW_BLOCK_P = 64  # grid positions per program of the dw kernel
DW_NUM_WARPS = 4


def rows(grid_h: int) -> int:
    """Grid rows per forward program: the grid in the fewest bands of at most ``MAX_BAND_ROWS`` rows, of equal
    height (a last band of a few rows would walk the full band's steps for nothing)."""
    return cdiv(grid_h, cdiv(grid_h, MAX_BAND_ROWS))


def block_w(grid_w: int) -> int:
    """Columns per forward program: the grid width padded to a power of two, at least 8 and at most 16."""
    return min(16, max(8, 1 << (grid_w - 1).bit_length()))


def block_c(channels: int) -> int:
    """Channels per program: 64, or the whole (power-of-two padded, at least 16) channel dim when smaller."""
    return 64 if channels >= 64 else max(16, 1 << (channels - 1).bit_length())
