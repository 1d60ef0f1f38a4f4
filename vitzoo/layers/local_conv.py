"""The local convolution of the token mixers: a centred depthwise conv over the patch grid of a token sequence."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..ops import local_conv
from .kept import KeepsValue, kept_value_key


class GridDepthwiseConv(KeepsValue, nn.Module):
    """Centred depthwise conv over the patch grid of a (B, N, C) token sequence.

    Prefix (cls / register) tokens pass through unchanged: they have no place on the grid. This is the
    non-causal stand-in for the causal short convolutions of language-model mixers (DeltaNet, H3). The parameters
    are an ``nn.Conv2d``'s (``conv.weight`` (C, 1, k, k), ``conv.bias``); the forward runs in the token layout in
    one pass (:func:`vitzoo.ops.local_conv`), with no grid copies and no concatenation.

    Args:
        dim: channels C.
        kernel_size: odd kernel size k (zero padding k // 2 keeps the grid).
        bias: a per-channel bias.
        device: device of the parameters.
        dtype: dtype of the parameters.
    """

    def __init__(self, dim: int, kernel_size: int = 3, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=bias, device=device, dtype=dtype
        )

    def tap_major_weight(self) -> torch.Tensor:
        """The weight as (1, C, k, k) in channels-last layout (taps outer, channels contiguous), the layout the
        kernel reads with one vector load per tap; kept between forwards while the weight is unchanged
        (:func:`.kept.kept_value_key`), copied on every forward that records its gradient."""
        weight = self.conv.weight
        return self.kept(kept_value_key((weight,)), lambda: weight.view(
            1, self.conv.out_channels, *self.conv.kernel_size).contiguous(memory_format=torch.channels_last))

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int,
                activation: str | None = None) -> torch.Tensor:
        """The convolved tokens, then ``activation`` (None or 'silu', on every token) in the same pass."""
        return local_conv(x, self.tap_major_weight(), grid_size, num_prefix_tokens, bias=self.conv.bias,
                          activation=activation)
