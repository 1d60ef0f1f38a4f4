"""InLine attention: injective linear attention plus a predicted local residual (Han et al., NeurIPS 2024).

Follows the released code (``docs/mixers.md``, InLine):
- phi = identity; weights w_ti = (s/N) q_t.(k_i - kbar) + 1/N with s = d^-1/2 and N counting the cls token, so
  every query's weights sum to exactly 1 (they may be negative). In the shared op this is identity features with
  centred keys, ``scale = s/N`` and an appended constant feature ``N^-1/2`` (whose square adds the 1/N).
- Local residual: a per-image 3x3 depthwise kernel on V, predicted from the token mean of the block input by a
  grouped (groups = heads) two-layer MLP, applied to the patch tokens only (the cls token gets none).
- No attention dropout: the released model builds one but never applies it, and there is no attention matrix to
  drop from. ``attn_drop`` stays in the signature for the shared mixer contract and must be 0.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..ops import linear_attention, local_conv
from ._common import check_grid, grouped_pointwise


class InLineAttention(nn.Module):
    """Injective linear attention with InLine's input-conditioned 3x3 local residual on V.

    Args:
        dim: token width C.
        num_heads: heads; ``dim`` must be divisible by it.
        qkv_bias: bias on the qkv projection.
        attn_drop: must be 0 (the released model applies no attention dropout).
        proj_drop: dropout after the output projection.
        device: parameter device.
        dtype: parameter dtype.
        kernel_size: size of the predicted depthwise kernel (3 in the released code).
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
            kernel_size: int = 3,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        if attn_drop:
            raise ValueError(f"InLineAttention: attn_drop must be 0 (the released model has none), got {attn_drop}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.kernel_size = kernel_size
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        # Predicts one kernel_size^2 depthwise kernel per (image, channel) from the token mean (the released
        # code's ``residual``).
        self.residual_predictor = nn.Sequential(
            nn.Conv1d(dim, dim, 1, groups=num_heads, **dd),
            nn.GELU(),
            nn.Conv1d(dim, dim * kernel_size**2, 1, groups=num_heads, **dd),
        )
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def local_kernels(self, x: torch.Tensor) -> torch.Tensor:
        """The per-image depthwise kernels predicted from the token mean of ``x`` (B, N, C); (B, C, k, k)."""
        first, act, second = self.residual_predictor
        # The grouped 1x1 convs on a length-1 signal are block-diagonal matmuls: two batched products instead of
        # cuDNN's grouped-convolution launches (about 12 per block on the H200).
        kernels = grouped_pointwise(second, act(grouped_pointwise(first, x.mean(dim=1))))
        return kernels.view(x.shape[0], x.shape[2], self.kernel_size, self.kernel_size)

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
        check_grid(x, grid_size, num_prefix_tokens)
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).unbind(2)
        out = linear_attention(
            q, k, v, feature_map="identity", center_keys=True, scale=self.head_dim**-0.5 / n, feature_const=n**-0.5,
        ).reshape(b, n, c)
        # + the local residual on the patch tokens, in one pass over the token layout (the cls token gets none)
        out = local_conv(v.reshape(b, n, c), self.local_kernels(x), grid_size, num_prefix_tokens, residual=out)
        return self.proj_drop(self.proj(out))
