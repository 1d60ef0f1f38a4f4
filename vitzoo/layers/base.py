"""The shell every token mixer shares: the constructor and forward contracts, the fused input projection ``qkv``,
attention dropout and the output projection ``proj``.

Constructor: ``Mixer(dim, num_heads=..., qkv_bias=..., attn_drop=..., proj_drop=..., device=None, dtype=None,
**family_options)``. Forward: ``mixer(x, grid_size=(H, W), num_prefix_tokens=P)`` maps (B, N, C) to (B, N, C) with
``N == P + H * W``: P prefix (cls / register) tokens, then the patch tokens in row-major grid order.

Dropout, the same rule for every mixer: ``attn_drop`` drops attention probabilities in a mixer that forms them
(softmax attention); every other mixer has no attention matrix, and ``attn_drop`` drops the mixed values (B, N, E)
between the mixing and ``proj``. ``proj_drop`` drops ``proj``'s output. Both are identities in eval mode.
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function, register_notrace_module

from ..ops import delta_rule_bidirectional, linear_attention, local_conv
from .kept import KeptCastLinear

# The ops pick their backend from the tensors' device and check their inputs' shapes, which FX cannot trace: they
# are leaves (call_function nodes run eagerly) for timm's FX feature extraction.
for _op in (linear_attention, local_conv, delta_rule_bidirectional):
    register_notrace_function(_op)
del _op


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same ``p``, ``inplace`` and behaviour) that hands its input back without dispatching an op
    when there is nothing to drop: p = 0 (every registered model's default) or eval mode. An eager forward of a
    DeiT-T-shaped model called 38 such no-op dropouts, each a dispatch of host time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        return super().forward(x)


# a leaf for FX, as nn.Dropout is: a trace must not bake in the training mode it was taken in
register_notrace_module(Dropout)


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)`` for (B, h, N, d) inputs, also for a batch of
    zero images, for which SDPA on CUDA under bf16 autocast returns no tensor (torch 2.11, H100)."""
    if q.shape[0] == 0:
        return q.new_empty((*q.shape[:-1], v.shape[-1]))
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)


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


class TokenMixer(nn.Module):
    """Base of the zoo's token mixers: heads, ``qkv``, ``attn_drop``, ``proj``, ``proj_drop`` and ``forward``.

    A subclass builds its own layers between :meth:`__init__` (which builds ``qkv``) and :meth:`build_output`
    (which builds the dropouts and ``proj``), so that modules are created, and initialised, input side first, and
    implements :meth:`mix`. ``forward`` checks the grid, mixes, applies ``attn_drop`` (unless the subclass sets
    ``drops_attention_probs`` and drops the probabilities itself), then ``proj`` and ``proj_drop``.

    Args:
        dim: token width C.
        num_heads: number of heads h; C must be divisible by h.
        qkv_bias: bias on the input projection.
        qkv_features: output width of the fused input projection ``qkv`` (C -> qkv_features); None when the mixer
            builds its own input projection.
        device: device of the parameters.
        dtype: dtype of the parameters.
    """

    drops_attention_probs: ClassVar[bool] = False

    def __init__(
            self,
            dim: int,
            num_heads: int,
            qkv_bias: bool,
            qkv_features: int | None,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"{type(self).__name__}: dim={dim} must be divisible by num_heads={num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        if qkv_features is not None:
            self.qkv = KeptCastLinear(dim, qkv_features, bias=qkv_bias, device=device, dtype=dtype)

    def build_output(
            self, attn_drop: float, proj_drop: float, value_features: int | None = None, device=None, dtype=None,
    ) -> None:
        """Build ``attn_drop``, ``proj`` (value_features, default C, -> C, with bias) and ``proj_drop``."""
        self.attn_drop = Dropout(attn_drop)
        self.proj = KeptCastLinear(value_features or self.dim, self.dim, device=device, dtype=dtype)
        self.proj_drop = Dropout(proj_drop)

    def mix(self, x: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
        """The mixed values of ``x`` (B, N, C) before ``proj``: (B, N, E) in the dtype ``proj`` computes in (``x``'s,
        or the autocast dtype under autocast, so 16-bit values are not widened only for ``proj`` to narrow them)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
        """Mix the tokens of ``x`` (B, N, C), N = ``num_prefix_tokens`` + H * W; returns (B, N, C)."""
        check_grid(x, grid_size, num_prefix_tokens)
        out = self.mix(x, grid_size, num_prefix_tokens)
        if not self.drops_attention_probs:
            out = self.attn_drop(out)
        return self.proj_drop(self.proj(out))
