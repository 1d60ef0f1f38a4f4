"""Launch shape of the local-kernel predictor: the token sums in (image, 64-channel block, span of 256 tokens)
programs walking their span in blocks of 32: one span at 224 px, 17 at 1024 px, where one program per image and
channel block walked all 4097 tokens of InLine-T's 12 images (its forward took 5.64 ms of device time on the H100,
4.39 ms with PyTorch's mean); the MLP in (block of 16 images, group) programs, the second layer's outputs in blocks
of 64."""
from __future__ import annotations

from ..utils import padded

MEAN_SPAN = 256  # a multiple of MEAN_BLOCK_N
MEAN_BLOCK_N = 32
MEAN_BLOCK_C = 64
MLP_BLOCK_B = 16
MLP_BLOCK_J = 64
NUM_WARPS = 4


def block_width(width: int) -> int:
    """A group's channels as a tile dim: the next power of two, at least 16 (the tensor cores' smallest K)."""
    return padded(width)
