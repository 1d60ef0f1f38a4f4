"""Bidirectional DeltaNet (Yang et al., NeurIPS 2024), adapted to images; ``docs/mixers.md`` (Bidirectional DeltaNet)
states the math and the zoo's choices.

Per token x (B, N, C), heads h = 1..H of width D = C / H:

    q, k, v = SiLU(DWConv3x3(W_qkv x))     one shared projection; the conv runs on the patch grid, prefix tokens
                                           (cls) pass unconvolved
    beta    = sigmoid(W_beta x)             one write strength per head and token, in (0, 1)
    o       = 0.5 * (delta rule in token order + delta rule in reversed order, flipped back), with q and k
              L2-normalised per head (fused in :func:`vitzoo.ops.delta_rule_bidirectional`)
    out     = W_proj (RMSNorm_head(o) * SiLU(W_g x))     per-head RMSNorm (eps 1e-5, fp32) with an output gate

The depthwise conv replaces the language model's causal short convolution (kernel 4); like it, it has no bias.
``attn_drop`` drops the gated output before ``W_proj`` (the delta rule has no attention matrix).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import register_notrace_module

from ..ops import delta_rule_bidirectional
from .base import TokenMixer
from .kept import KeptCastLinear, NarrowLinear
from .local_conv import GridDepthwiseConv
from .norms import low_precision_rms_norm


class BidirectionalDeltaNet(TokenMixer):
    """Bidirectional DeltaNet token mixer.

    Args:
        dim: token width C.
        num_heads: number of heads; C must be divisible by it.
        qkv_bias: bias on the q/k/v projection.
        attn_drop: dropout on the gated output before ``proj`` (the delta rule has no attention matrix).
        proj_drop: dropout after ``proj``.
        conv_size: kernel size of the depthwise conv on the patch grid.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            qkv_bias: bool = False,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            device=None,
            dtype=None,
            conv_size: int = 3,
    ) -> None:
        dd = {"device": device, "dtype": dtype}
        super().__init__(dim, num_heads, qkv_bias, qkv_features=3 * dim, **dd)
        self.conv = GridDepthwiseConv(3 * dim, conv_size, bias=False, **dd)
        self.beta_proj = NarrowLinear(dim, num_heads, bias=False, **dd)
        self.gate = KeptCastLinear(dim, dim, bias=False, **dd)
        self.norm_weight = nn.Parameter(torch.ones(self.head_dim, **dd))
        self.build_output(attn_drop, proj_drop, **dd)

    def init_weights(self) -> None:
        """Re-initialise the parameters the backbone's Linear init does not cover."""
        nn.init.ones_(self.norm_weight)
        self.conv.conv.reset_parameters()

    def no_weight_decay(self) -> set[str]:
        """The output-norm gain and the depthwise conv weight stay out of weight decay (``docs/mixers.md``,
        Bidirectional DeltaNet, says why)."""
        return {"norm_weight", "conv.conv.weight"}

    def mix(self, x: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.conv(self.qkv(x), grid_size, num_prefix_tokens, activation="silu")
        q, k, v = qkv.view(b, n, 3, self.num_heads, self.head_dim).unbind(2)
        # the write strengths are the sigmoid of beta_proj, taken inside the delta rule's kernels
        o = delta_rule_bidirectional(q, k, v, self.beta_proj(x), qk_l2norm=True, beta_logits=True)
        # The norm and its SiLU output gate run in one kernel with the Triton backend, accumulating in fp32; under
        # autocast the output stays 16-bit (no fp32 round trip of the activations).
        g = self.gate(x).view(b, n, self.num_heads, self.head_dim)
        o = low_precision_rms_norm(o, (self.head_dim,), self.norm_weight, eps=1e-5, gate=g)
        return o.reshape(b, n, c)


# The forward branches on tensor properties (the 16-bit norm path (a dtype check)), which FX cannot trace: the mixer
# is a leaf for timm's FX feature extraction.
register_notrace_module(BidirectionalDeltaNet)
