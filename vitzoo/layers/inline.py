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
from timm.layers import register_notrace_module

from ..ops import linear_attention, local_conv, predict_local_kernels
from .base import TokenMixer

# The op is a leaf for FX (it picks its backend from the tensors' device). timm's autowrap patches only the globals
# of the module whose ``forward`` is traced, which is ``base``, not this one (``mix`` lives here): wrap it here.
torch.fx.wrap("linear_attention")
torch.fx.wrap("local_conv")


class LocalKernelPredictor(nn.Sequential):
    """InLine's predictor of per-image depthwise kernels: token mean -> grouped 1x1 conv -> GELU -> grouped 1x1 conv.

    Keeps the released code's layers (an ``nn.Sequential`` of two grouped ``Conv1d`` and a GELU, so the state-dict
    keys match) and runs them through :func:`vitzoo.ops.predict_local_kernels`: ``forward`` maps tokens (B, N, C)
    to kernels (B, C, k, k) in the parameters' dtype, in channels-last layout.
    """

    def __init__(self, dim: int, groups: int, kernel_size: int, device=None, dtype=None) -> None:
        dd = {"device": device, "dtype": dtype}
        super().__init__(
            nn.Conv1d(dim, dim, 1, groups=groups, **dd),
            nn.GELU(),
            nn.Conv1d(dim, dim * kernel_size**2, 1, groups=groups, **dd),
        )
        self.kernel_size = kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, _, second = self
        # in the parameters' dtype whatever autocast is on; without gradients two launches (the token mean, then
        # both layers with the GELU, written tap-major), where PyTorch took seven
        return predict_local_kernels(x, first.weight, first.bias, second.weight, second.bias, first.groups,
                                     self.kernel_size)


# The op picks its backend and autocast state from the input's device, which FX cannot trace: a leaf for timm's FX
# feature extraction.
register_notrace_module(LocalKernelPredictor)


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
        self.residual_predictor = LocalKernelPredictor(dim, num_heads, kernel_size, **dd)
        self.build_output(attn_drop, proj_drop, **dd)

    def mix(self, x: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).unbind(2)
        out = linear_attention(
            q, k, v, feature_map="identity", center_keys=True, scale=self.head_dim**-0.5 / n, feature_const=n**-0.5,
        ).reshape(b, n, c)
        # + the local residual on the patch tokens, in one pass over the token layout (the cls token gets none)
        return local_conv(v.reshape(b, n, c), self.residual_predictor(x), grid_size, num_prefix_tokens, residual=out)
