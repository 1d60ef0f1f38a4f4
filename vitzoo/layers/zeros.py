"""ZeroS: zero-sum linear attention (Lu et al., NeurIPS 2025), non-causal encoder form.

Per head, with radial logits s_i (a function of token i only) and their softmax expansion
softmax(s)_i = 1/N + delta_i/N + eps_i (delta_i = s_i - mean(s); the residual eps sums to zero), ZeroS drops the
zero-order 1/N term and gates the other two per query token:

    w_{t,i} = sigma1_t * delta_i / N + sigmah_t * eps_i          (sum_i w_{t,i} = 0: weights may be negative)
            [+ sigma0_t / N with the optional zero-order gate]
    o_t     = sum_i w_{t,i} * (qhat_t . khat_i) * v_i             (qhat, khat: L2-normalised (rotated) q, k)

Because s_i does not depend on t, o_t is linear in three key-side states, so the mixer runs in O(N d^2) through
the shared op :func:`vitzoo.ops.linear_attention` (feature_map='l2norm', W=3 key weights, per-query
coefficients). ``docs/mixers.md`` (ZeroS) states the math and where the zoo differs from the released code.
``attn_drop`` drops o before ``proj`` (there is no attention matrix).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import register_notrace_module

from ..ops import linear_attention, zeros_weights
from .base import TokenMixer
from .kept import KeptCastLinear, NarrowLinear
from .norms import low_precision_layer_norm
from .rope import axial_rope

_HEAD_NORM_EPS = 1e-5


class ZeroSAttention(TokenMixer):
    """Non-causal ZeroS token mixer: (B, N, C) -> (B, N, C).

    Projections q, k, v, u (fused as ``qkvu``), per-query-token and per-head gates sigma1 and sigmah (``gates``,
    C -> 2h, sigmoid), radial logits s_i = -<u_i, ubar> / sqrt(d) with the smoothed mean
    ubar = (tau * mu + sum_j u_j) / (tau + N) over all N tokens, the zero-sum weights above, per-head
    LayerNorm without affine, and the output projection ``proj``.

    Encoder form: every count is N (the released code's running count t is the causal form; an image has no
    token order, so every query reads the whole sequence and sees the same states).

    Args:
        dim: token width C.
        num_heads: number of heads h; C must be divisible by h.
        qkv_bias: bias on the q, k, v, u projections.
        attn_drop: dropout on the mixed values before ``proj`` (there is no attention matrix to drop from).
        proj_drop: dropout after the output projection.
        device: device of the parameters.
        dtype: dtype of the parameters.
        zero_order_gate: restore the zero-order term through a third gate sigma0 = tanh(.) per token and head,
            w_{t,i} += sigma0_t / N (``gates`` becomes C -> 3h). The released code has this gate for its first
            layer only and off by default; so is it here (the ``zeros_*`` models build every block alike, with
            it off).
        rope: rotate q and k before their L2 normalisation, as the released code does with 1-D RoPE over the
            sequence. Here it is 2-D axial RoPE over the patch grid (half of each head's channels per image axis),
            the natural form for an image whose tokens have two coordinates; prefix tokens have no grid
            position and stay unrotated. Off by default: the ``zeros_*`` models carry the DeiT backbone's
            absolute position embeddings (the paper evaluates ZeroS on ImageNet inside DeiT-Tiny) and keep their
            results. Needs a head dim divisible by 4.
        rope_base: the rotary frequencies' base (1e4 as the released code).
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
            zero_order_gate: bool = False,
            rope: bool = False,
            rope_base: float = 10000.0,
    ) -> None:
        dd = {"device": device, "dtype": dtype}
        # No fused ``qkv``: the input projection ``qkvu`` also projects u, the radial-logit input.
        super().__init__(dim, num_heads, qkv_bias, qkv_features=None, **dd)
        if rope and self.head_dim % 4:
            raise ValueError(f"ZeroSAttention: rope needs a head dim divisible by 4, got {self.head_dim}")
        self.zero_order_gate = zero_order_gate
        self.rope = rope
        self.rope_base = rope_base
        self.qkvu = KeptCastLinear(dim, 4 * dim, bias=qkv_bias, **dd)
        self.gates = NarrowLinear(dim, (3 if zero_order_gate else 2) * num_heads, **dd)
        # Prior mean of u per head and the log of its pseudo-count tau (both learnable, init 0 -> tau = 1).
        self.mu = nn.Parameter(torch.empty(num_heads, self.head_dim, **dd))
        self.log_tau = nn.Parameter(torch.empty(num_heads, **dd))
        self.build_output(attn_drop, proj_drop, **dd)
        self.init_weights()

    def init_weights(self) -> None:
        """Initialise the non-Linear parameters: mu = 0 and log tau = 0."""
        nn.init.zeros_(self.mu)
        nn.init.zeros_(self.log_tau)

    def mix(self, x: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
        # ``grid_size`` places the patches for ``rope`` (else it is only checked, by ``forward``).
        batch, num_tokens, dim = x.shape
        q, k, v, u = self.qkvu(x).view(batch, num_tokens, 4, self.num_heads, self.head_dim).unbind(2)
        if self.rope:
            q = axial_rope(q, grid_size, num_prefix_tokens, self.rope_base)
            k = axial_rope(k, grid_size, num_prefix_tokens, self.rope_base)
        # The radial logits s_i = -<u_i, ubar> / sqrt(d), the gates and the three key and query weightings, in fp32
        # (see vitzoo.ops.zeros_weights): w_{t,i} = alpha_t e^{s_i} + beta_t delta_i + gamma_t, i.e.
        # sigmah * softmax_i + (sigma1 - sigmah) * delta_i / N - sigmah / N (+ sigma0 / N with the zero-order gate).
        gate_logits = self.gates(x).view(batch, num_tokens, self.gates.out_features // self.num_heads, self.num_heads)
        key_weights, query_weights = zeros_weights(u, gate_logits, self.mu, self.log_tau)
        out = linear_attention(q, k, v, key_weights, query_weights, feature_map="l2norm")
        out = low_precision_layer_norm(out, (self.head_dim,), None, None, _HEAD_NORM_EPS)
        return out.reshape(batch, num_tokens, dim)


# The forward branches on tensor properties (the ops' backend by device and dtype, the 16-bit norm path), which FX
# cannot trace: the mixer is a leaf for timm's FX feature extraction.
register_notrace_module(ZeroSAttention)
