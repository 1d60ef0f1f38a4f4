"""Softmax attention (DeiT baseline): timm's ``Attention`` (SDPA) behind the zoo's mixer interface."""
from __future__ import annotations

import torch
from timm.layers import Attention


class SoftmaxAttention(Attention):
    """Multi-head softmax attention through ``F.scaled_dot_product_attention``.

    A subclass of timm's ``Attention`` so parameter names (``qkv``, ``proj``) and weights match timm's DeiT.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            qkv_bias: bool = False,
            attn_drop: float = 0.0,
            proj_drop: float = 0.0,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__(
            dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop,
            device=device, dtype=dtype,
        )

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int] | None = None, num_prefix_tokens: int = 1):
        return super().forward(x)
