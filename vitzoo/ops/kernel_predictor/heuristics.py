"""Launch shape of the local-kernel predictor: the token mean in (image, 64-channel block) programs walking the
tokens in blocks of 32; the MLP in (block of 16 images, group) programs, the second layer's outputs in blocks of 64."""
from __future__ import annotations

from ..utils import padded

MEAN_BLOCK_N = 32
MEAN_BLOCK_C = 64
MLP_BLOCK_B = 16
MLP_BLOCK_J = 64
NUM_WARPS = 4


def block_width(width: int) -> int:
    """A group's channels as a tile dim: the next power of two, at least 16 (the tensor cores' smallest K)."""
    return padded(width)
