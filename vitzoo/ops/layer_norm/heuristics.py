"""Launch shape of the norm kernels: several whole rows per program, so narrow rows (64-192 channels, the zoo's head
and token widths) fill a program's threads; PyTorch's layer-norm kernel gives each row a thread block, which leaves
most of it idle at these widths."""
from __future__ import annotations

import functools

from ..utils import cdiv, interpreting, padded

MAX_WIDTH = 16384  # the widest row one program holds in registers
_TILE = 4096  # elements a program handles per row block
_BACKWARD_PROGRAMS_PER_SM = 4


def block_n(width: int) -> int:
    """The row tile: the row width padded to a power of two, at least 16."""
    return padded(width)


def block_m(width: int) -> int:
    """Rows per program: as many as fit a tile of about 4096 elements (one under the interpreter at wide rows)."""
    return max(1, _TILE // block_n(width))


def num_warps(width: int) -> int:
    return 4 if block_m(width) * block_n(width) <= _TILE else 8


@functools.cache
def launch_shape(width: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) for rows ``width`` wide, worked out once per width (host time per launch)."""
    return block_m(width), block_n(width), num_warps(width)


def backward_programs(rows: int, width: int, multiprocessors: int) -> int:
    """Programs of the backward: each walks several row blocks and writes one row of partial weight / bias sums."""
    blocks = cdiv(rows, block_m(width))
    return min(blocks, 4 if interpreting() else _BACKWARD_PROGRAMS_PER_SM * multiprocessors)
