"""Plain ReLU linear attention: the baseline every linear mixer is judged against.

    out_t = sum_i (relu(q_t) . relu(k_i)) v_i / (sum_i relu(q_t) . relu(k_i) + eps)        (per head)

through :func:`vitzoo.ops.linear_attention`, accumulated in fp32. ``attn_drop`` drops the mixed values (there is
no attention matrix).
"""
from __future__ import annotations

import torch

from ..ops import linear_attention
from .base import TokenMixer

# The op is a leaf for FX (it picks its backend from the tensors' device). timm's autowrap patches only the globals
# of the module whose ``forward`` is traced, which is ``base``, not this one (``mix`` lives here): wrap it here.
torch.fx.wrap("linear_attention")


class ReLULinearAttention(TokenMixer):
    """Normalised non-causal linear attention with a ReLU feature map: (B, N, C) -> (B, N, C).

    Args:
        dim: token width C.
        num_heads: number of heads h; C must be divisible by h.
        qkv_bias: bias on the qkv projection.
        attn_drop: dropout on the mixed values before ``proj``.
        proj_drop: dropout after the output projection.
        device: device of the parameters.
        dtype: dtype of the parameters.
        eps: added to the normaliser.
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
            eps: float = 1e-6,
    ) -> None:
        dd = {"device": device, "dtype": dtype}
        super().__init__(dim, num_heads, qkv_bias, qkv_features=3 * dim, **dd)
        self.eps = eps
        self.build_output(attn_drop, proj_drop, **dd)

    def mix(self, x: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).unbind(2)
        out = linear_attention(q, k, v, feature_map="relu", normalize=True, eps=self.eps)
        return out.reshape(b, n, c)
