"""2-D axial RoPE written with complex rotations, independent of ``vitzoo.layers.rope.axial_rope``."""
from __future__ import annotations

import torch


def rope_2d_reference(x: torch.Tensor, grid_size: tuple[int, int], num_prefix: int, base: float = 1e4) -> torch.Tensor:
    """Rotate (B, N, h, D) tokens: channel pairs (j, j + D/4) of the first half by row * base^(-4j/D), of the second
    half by column * base^(-4j/D); prefix tokens unrotated."""
    dim = x.shape[-1]
    quarter = dim // 4
    freqs = base ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
    out = x.clone()
    for index in range(grid_size[0] * grid_size[1]):
        token = num_prefix + index
        for half, position in enumerate(divmod(index, grid_size[1])):
            lo = half * dim // 2
            pairs = torch.complex(x[:, token, :, lo:lo + quarter], x[:, token, :, lo + quarter:lo + 2 * quarter])
            rotated = pairs * torch.exp(1j * position * freqs)
            out[:, token, :, lo:lo + quarter] = rotated.real
            out[:, token, :, lo + quarter:lo + 2 * quarter] = rotated.imag
    return out
