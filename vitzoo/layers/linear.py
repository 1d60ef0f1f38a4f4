"""Plain ReLU linear attention: the baseline every linear mixer is judged against.

out_t = sum_i relu(q_t).relu(k_i) v_i / (sum_i relu(q_t).relu(k_i) + eps), accumulated in fp32.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..ops import linear_attention


class ReLULinearAttention(nn.Module):
    """Normalised non-causal linear attention with a ReLU feature map."""

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            qkv_bias: bool = False,
            attn_drop: float = 0.0,
            proj_drop: float = 0.0,
            device=None,
            dtype=None,
            eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.eps = eps
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, device=device, dtype=dtype)
        # Linear attention has no attention matrix to drop; attn_drop acts on the mixed values.
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, device=device, dtype=dtype)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int] | None = None, num_prefix_tokens: int = 1):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).unbind(2)
        out = linear_attention(q, k, v, feature_map="relu", normalize=True, eps=self.eps)
        out = self.attn_drop(out.reshape(b, n, c))
        return self.proj_drop(self.proj(out))
