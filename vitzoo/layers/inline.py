"""InLine attention: injective linear attention plus a predicted local residual (Han et al., NeurIPS 2024).

Follows the released code (``docs/mixers.md``, InLine), per head with s = d^-1/2 and N counting the cls token:

    w_{t,i} = (s / N) (q_t . k_i - q_t . kbar) + 1 / N       (kbar: mean key; every row sums to exactly 1)
    out_t   = sum_i w_{t,i} v_i  +  [t is a patch] DWConv3x3_{W(x)}(V)_t

- phi = identity; the weights may be negative. In the shared op this is identity features with centred keys,
  ``scale = s/N`` and an appended constant feature ``N^-1/2`` (whose square adds the 1/N).
- Local residual: a per-image 3x3 depthwise kernel W(x) on V, predicted from the token mean of the block input by
  a grouped (groups = heads) two-layer MLP, applied to the patch tokens only (the cls token gets none).
- ``attn_drop`` drops the mixed values before ``proj``, as for every mixer without an attention matrix. The
  released model builds an attention dropout but never applies it; the zoo's recipes leave it at 0.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..ops import linear_attention, local_conv
from .base import TokenMixer

# The op is a leaf for FX (it picks its backend from the tensors' device). timm's autowrap patches only the globals
# of the module whose ``forward`` is traced, which is ``base``, not this one (``mix`` lives here): wrap it here.
torch.fx.wrap("linear_attention")
torch.fx.wrap("local_conv")


def grouped_pointwise(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """A grouped kernel-size-1 ``conv`` applied to (B, C_in) vectors, as one batched matmul; returns (B, C_out).

    Equals ``conv(x.unsqueeze(-1)).squeeze(-1)`` (same parameters), without a convolution launch per group.
    """
    groups = conv.groups
    weight = conv.weight.view(groups, conv.out_channels // groups, conv.in_channels // groups)
    out = torch.einsum("bgi,goi->bgo", x.view(x.shape[0], groups, -1), weight).reshape(x.shape[0], -1)
    return out if conv.bias is None else out + conv.bias.to(out.dtype)


class InLineAttention(TokenMixer):
    """Injective linear attention with InLine's input-conditioned 3x3 local residual on V.

    Args:
        dim: token width C.
        num_heads: heads; ``dim`` must be divisible by it.
        qkv_bias: bias on the qkv projection.
        attn_drop: dropout on the mixed values before ``proj``.
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
        dd = {"device": device, "dtype": dtype}
        super().__init__(dim, num_heads, qkv_bias, qkv_features=3 * dim, **dd)
        self.kernel_size = kernel_size
        # Predicts one kernel_size^2 depthwise kernel per (image, channel) from the token mean (the released
        # code's ``residual``).
        self.residual_predictor = nn.Sequential(
            nn.Conv1d(dim, dim, 1, groups=num_heads, **dd),
            nn.GELU(),
            nn.Conv1d(dim, dim * kernel_size**2, 1, groups=num_heads, **dd),
        )
        self.build_output(attn_drop, proj_drop, **dd)

    def local_kernels(self, x: torch.Tensor) -> torch.Tensor:
        """The per-image depthwise kernels predicted from the token mean of ``x`` (B, N, C); (B, C, k, k)."""
        first, act, second = self.residual_predictor
        # The grouped 1x1 convs on a length-1 signal are block-diagonal matmuls: two batched products instead of
        # cuDNN's grouped-convolution launches (about 12 per block on the H200).
        kernels = grouped_pointwise(second, act(grouped_pointwise(first, x.mean(dim=1))))
        return kernels.view(x.shape[0], x.shape[2], self.kernel_size, self.kernel_size)

    def mix(self, x: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).unbind(2)
        out = linear_attention(
            q, k, v, feature_map="identity", center_keys=True, scale=self.head_dim**-0.5 / n, feature_const=n**-0.5,
        ).reshape(b, n, c)
        # + the local residual on the patch tokens, in one pass over the token layout (the cls token gets none)
        return local_conv(v.reshape(b, n, c), self.local_kernels(x), grid_size, num_prefix_tokens, residual=out)
