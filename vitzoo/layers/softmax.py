"""Softmax attention, the DeiT baseline.

    out_t = sum_i softmax_i(s q_t . k_i) v_i        (s = d^-1/2, per head)

through ``F.scaled_dot_product_attention`` (:func:`.base.softmax_attention`). Parameter names (``qkv``, ``proj``)
and the computation are those of timm's ``Attention`` (its fused path), so timm's ``deit_*`` weights load unchanged.
The one mixer with an attention matrix: ``attn_drop`` drops attention probabilities (SDPA's ``dropout_p``) in
training.
"""
from __future__ import annotations

import torch

from .base import TokenMixer, softmax_attention

# a leaf for FX: it branches on the batch size
torch.fx.wrap("softmax_attention")


class SoftmaxAttention(TokenMixer):
    """Multi-head softmax attention: (B, N, C) -> (B, N, C).

    Args:
        dim: token width C.
        num_heads: number of heads h; C must be divisible by h.
        qkv_bias: bias on the qkv projection.
        attn_drop: dropout on the attention probabilities (training only).
        proj_drop: dropout after the output projection.
        device: device of the parameters.
        dtype: dtype of the parameters.
    """

    drops_attention_probs = True

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
        dd = {"device": device, "dtype": dtype}
        super().__init__(dim, num_heads, qkv_bias, qkv_features=3 * dim, **dd)
        self.build_output(attn_drop, proj_drop, **dd)

    def mix(self, x: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = softmax_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        return out.transpose(1, 2).reshape(b, n, c)
