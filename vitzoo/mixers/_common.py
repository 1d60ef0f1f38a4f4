"""Pieces shared by several token mixers: patch tokens between sequence and grid layouts, grid position encodings."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def check_grid(x: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int) -> None:
    """Raise a ValueError when ``x`` (B, N, C) does not hold ``num_prefix_tokens`` + H*W tokens."""
    h, w = grid_size
    if x.shape[1] != num_prefix_tokens + h * w:
        raise ValueError(
            f"token mixer got {x.shape[1]} tokens but grid_size={tuple(grid_size)} with {num_prefix_tokens} prefix "
            f"token(s) needs {num_prefix_tokens + h * w}"
        )


def tokens_to_grid(x: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """(B, H*W, C) patch tokens -> (B, C, H, W)."""
    b, n, c = x.shape
    return x.transpose(1, 2).reshape(b, c, grid_size[0], grid_size[1])


def grid_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C)."""
    return x.flatten(2).transpose(1, 2)


class GridDepthwiseConv(nn.Module):
    """Centred depthwise conv over the patch grid of a (B, N, C) token sequence.

    Prefix (cls / register) tokens pass through unchanged: they have no place on the grid. This is the
    non-causal stand-in for the causal short convolutions of language-model mixers (DeltaNet, H3).
    """

    def __init__(self, dim: int, kernel_size: int = 3, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=bias, device=device, dtype=dtype
        )

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
        prefix, patches = x[:, :num_prefix_tokens], x[:, num_prefix_tokens:]
        patches = grid_to_tokens(self.conv(tokens_to_grid(patches, grid_size)))
        return torch.cat([prefix, patches], dim=1) if num_prefix_tokens else patches


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
