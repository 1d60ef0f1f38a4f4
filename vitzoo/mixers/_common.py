"""Pieces shared by several token mixers: moving patch tokens between sequence and grid layouts."""
from __future__ import annotations

import torch
import torch.nn as nn


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
