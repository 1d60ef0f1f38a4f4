"""Launch shape of the local-convolution kernels.

Forward (also dx and the SiLU gradient): a band of grid rows by 16 columns by up to 64 channels per program, 4 warps;
grids up to 32 rows are one band, taller ones equal bands of at most 32 rows; the layers pass channels-last weights.
On an H100 (``benchmarks/results/local_conv/h100.json``, the input-row kernel) these were the fastest of nine launch
shapes at both resolutions measured: DeltaNet-T's 576-channel SiLU convolution (batch 256 on the 14 x 14 grid, bf16)
82 us a call against 96 us at 8 warps and 91 us in bands of 8 rows; on the 64 x 64 grid (1024 px, batch 16) 92 us
against 100 us in bands of 8 and 94 us in bands of 16; InLine-T's 192-channel convolution (per-image kernels, with
the residual) 40 and 44 us. Wider column blocks (32) ran 1.3-2.5x slower, 128-channel blocks 1.4-1.5x.

dw, K = 3: the forward's bands and column blocks, walked by input rows, one row of partial sums per (image, band,
column block) and tap: 135 us a call at DeltaNet-T's 224 px shape on the H100 (123 us at 1024 px) against 273 us for
tiles of 64 grid positions, which other K keep (one row of partial sums per tile and tap). An earlier row-band dw that
read nine shifted tiles per row ran 1.8-6x slower than those tiles on the H200.
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
