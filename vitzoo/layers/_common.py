"""Pieces shared by several token mixers and the backbones: grid checks, the local convolution, grid position
encodings, 16-bit norms."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function, register_notrace_module

from ..ops import delta_rule_bidirectional, linear_attention, local_conv

# The ops pick their backend from the tensors' device and check their inputs' shapes, which FX cannot trace: they
# are leaves (call_function nodes run eagerly) for timm's FX feature extraction.
for _op in (linear_attention, local_conv, delta_rule_bidirectional):
    register_notrace_function(_op)
del _op


# A leaf for FX: the check branches on the token count.
@register_notrace_function
def check_grid(x: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int) -> None:
    """Raise a ValueError when ``x`` (B, N, C) does not hold ``num_prefix_tokens`` + H*W tokens."""
    h, w = grid_size
    if x.shape[1] != num_prefix_tokens + h * w:
        raise ValueError(
            f"token mixer got {x.shape[1]} tokens but grid_size={tuple(grid_size)} with {num_prefix_tokens} prefix "
            f"token(s) needs {num_prefix_tokens + h * w}"
        )


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
        # in the token layout, in one pass (vitzoo.ops.local_conv): no grid copies, no concatenation
        weight = self.conv.weight.view(1, self.conv.out_channels, *self.conv.kernel_size)
        return local_conv(x, weight, grid_size, num_prefix_tokens, bias=self.conv.bias)


def grouped_pointwise(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """A grouped kernel-size-1 ``conv`` applied to (B, C_in) vectors, as one batched matmul; returns (B, C_out).

    Equals ``conv(x.unsqueeze(-1)).squeeze(-1)`` (same parameters), without a convolution launch per group.
    """
    groups = conv.groups
    weight = conv.weight.view(groups, conv.out_channels // groups, conv.in_channels // groups)
    out = torch.einsum("bgi,goi->bgo", x.view(x.shape[0], groups, -1), weight).reshape(x.shape[0], -1)
    return out if conv.bias is None else out + conv.bias.to(out.dtype)


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


def low_precision_layer_norm(
        x: torch.Tensor, normalized_shape: tuple[int, ...], weight: torch.Tensor | None, bias: torch.Tensor | None,
        eps: float,
) -> torch.Tensor:
    """``F.layer_norm`` that keeps a 16-bit input in its dtype under autocast (the kernel accumulates in fp32).

    Autocast runs layer_norm in fp32: a bf16 activation is then cast up, normalised in fp32 and cast back down by the
    next Linear, three passes over it where one does; only the output's rounding differs, and the next Linear rounds
    it to 16 bits anyway. Outside autocast, or for fp32 / fp64 inputs, this is ``F.layer_norm``.
    """
    if x.dtype in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return F.layer_norm(
                x, normalized_shape, None if weight is None else weight.to(x.dtype),
                None if bias is None else bias.to(x.dtype), eps,
            )
    return F.layer_norm(x, normalized_shape, weight, bias, eps)


def low_precision_rms_norm(x: torch.Tensor, normalized_shape: tuple[int, ...], weight: torch.Tensor | None,
                           eps: float) -> torch.Tensor:
    """``F.rms_norm`` that keeps a 16-bit input in its dtype under autocast, as :func:`low_precision_layer_norm`."""
    if x.dtype in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return F.rms_norm(x, normalized_shape, None if weight is None else weight.to(x.dtype), eps)
    return F.rms_norm(x, normalized_shape, weight, eps)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (same parameters and state_dict) through :func:`low_precision_layer_norm`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return low_precision_layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


# dtype and autocast checks are data-dependent for FX: a leaf for timm's feature extraction
register_notrace_module(LayerNorm)
