"""Rotary position embedding over the patch grid (ZeroS's and FEM's ``rope`` option)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def axial_rope(
        x: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int, base: float = 10000.0,
) -> torch.Tensor:
    """2-D axial rotary position embedding of per-head tokens (B, N, h, D) over the patch grid.

    The first half of each head's channels rotates with the patch row, the second half with the patch column; each
    half uses the rotate-half pairing (channel j with j + D/4) and frequencies base^(-j / (D/4)), the 1-D RoPE of
    the language models applied once per image axis. Prefix tokens have no grid position and stay unrotated.
    The tables are built in at least fp32 (fp64 for fp64 inputs). D must be divisible by 4.
    """
    batch, num_tokens, heads, dim = x.shape
    if dim % 4:
        raise ValueError(f"axial RoPE needs a head dim divisible by 4, got {dim}")
    acc = torch.promote_types(x.dtype, torch.float32)
    quarter = dim // 4
    inv_freq = base ** (-torch.arange(quarter, device=x.device, dtype=acc) / quarter)
    rows = torch.arange(grid_size[0], device=x.device, dtype=acc).repeat_interleave(grid_size[1])
    cols = torch.arange(grid_size[1], device=x.device, dtype=acc).repeat(grid_size[0])
    angles = torch.cat([rows[:, None] * inv_freq, rows[:, None] * inv_freq,
                        cols[:, None] * inv_freq, cols[:, None] * inv_freq], dim=-1)  # (H*W, D)
    angles = F.pad(angles, (0, 0, num_prefix_tokens, 0))  # prefix tokens: angle 0
    cos, sin = angles.cos()[:, None].to(x.dtype), angles.sin()[:, None].to(x.dtype)  # (N, 1, D)
    # rotate-half within each axis half: (a, b) -> (-b, a)
    a, b, c, d = x.split(quarter, dim=-1)
    rotated = torch.cat([-b, a, -d, c], dim=-1)
    return x * cos + rotated * sin
