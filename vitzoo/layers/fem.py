"""FEM: the Free Energy Mixer (Lu & Yang, ICLR 2026), non-causal, around a linear or a softmax prior.

A prior p_t(i) over tokens (normalised ReLU linear attention, or softmax attention) gives two reads per value
channel j:

    mu_t,j = sum_i p_t(i) v_i,j                                          (the mean)
    F_t,j  = (1 / beta_j) log sum_i p_t(i) exp(beta_j v_i,j)              (the free energy at beta_j = beta_max,j)

F -> mu as beta -> 0 and F -> the max of v over the prior's support as beta -> inf. A per-channel inner gate
lambda_t interpolates the reads (a linearised per-token temperature), and an RMS-normalised outer gate g_t
scales them: out_t = W_o[g_t * ((1 - lambda_t) mu_t + lambda_t F_t)]. Both reads come from ONE prior call on the
doubled values [v, exp(beta v - M)]. ``docs/mixers.md`` (FEM) states the math and the zoo's choices.

The linear prior is the released one: features phi(x) = ReLU(x) + 1e-6 (so every prior is a proper distribution,
even for a query whose projections are all negative) and the denominator clamped from below at 1e-6, not offset.
The options ``rope`` (2-D axial rotary embedding of q and k) and ``conv`` (3x3 depthwise conv on q, k, v over the
patch grid) give the released preset's position handling in vision form; both default off (see the class).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from ..ops import free_energy_mix, free_energy_reads, free_energy_values, linear_attention
from .base import TokenMixer, softmax_attention
from .kept import KeepsValue, KeptCastLinear, kept_value_key
from .local_conv import GridDepthwiseConv
from .rope import axial_rope

PRIORS = ("linear", "softmax")
BETA_INIT = 1.8  # beta_max = softplus(1.8) + 1e-6 ~ 1.95 at init, as the released code
_BETA_FLOOR = 1e-6
LINEAR_PRIOR_EPS = 1e-6  # the released linear prior: phi = ReLU + eps, denominator clamped at eps
_VALUE_RATIO = 0.5  # preset A: value width E = C / 2, Q = K = C


def fem_value_width(dim: int, num_heads: int) -> int:
    """Preset-A value width E: C/2 rounded to the nearest multiple of 4 * num_heads (so E/h is a multiple of 4)."""
    unit = 4 * num_heads
    return max(1, round(_VALUE_RATIO * dim / unit)) * unit


class FreeEnergyMixer(KeepsValue, TokenMixer):
    """Free Energy Mixer with a non-causal prior: (B, N, C) -> (B, N, C).

    Layers: ``qkv`` (C -> C + C + E: q and k C wide, values E wide, so d_k = C/h differs from d_v = E/h),
    ``gates`` (C -> 2E: the inner gate lambda and the outer gate g per value channel), the per-channel inverse
    temperature parameter ``beta_param`` (beta_max = softplus(beta_param) + 1e-6), and ``proj`` (E -> C).
    FEM's own arithmetic (clipping, exponentials, log-restore, gates) runs in fp32 (fp64 for fp64 inputs); the prior
    reads its features and values in the projections' precision, as attention does.

    Args:
        dim: token width C.
        num_heads: number of heads h; C must be divisible by h.
        qkv_bias: bias on the q, k, v projections.
        attn_drop: dropout on the gated reads before ``proj``, for both priors (dropping prior probabilities
            would unnormalise p and shift F by log(1 / keep) / beta).
        proj_drop: dropout after the output projection.
        device: device of the parameters.
        dtype: dtype of the parameters.
        prior: 'linear' (ReLU + 1e-6 features, normalised, through :func:`vitzoo.ops.linear_attention`) or
            'softmax' (``F.scaled_dot_product_attention``).
        rope: rotate q and k with a 2-D axial rotary embedding over the patch grid (prefix tokens unrotated)
            before the prior, as the released code rotates them with a 1-D one over the sequence. Off by default:
            the zoo's ``fem_*`` models carry the DeiT backbone's absolute position embeddings and keep computing
            what they computed before the option existed; turn it on for the released preset. Needs d_k
            divisible by 4.
        rope_base: the rotary frequencies' base (1e4 as the released code).
        conv: a 3x3 depthwise conv (no bias) on the q, k, v projections over the patch grid, prefix tokens
            unconvolved, placed as the zoo's DeltaNet short conv. It stands in for the released preset's local
            conditioning, a causal time-decay recurrence along the sequence that has no meaning for an unordered
            patch grid. Off by default so the ``fem_*`` models keep their parameter counts.
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
            prior: str = "linear",
            rope: bool = False,
            rope_base: float = 10000.0,
            conv: bool = False,
    ) -> None:
        if prior not in PRIORS:
            raise ValueError(f"FreeEnergyMixer: prior={prior!r} is not one of {PRIORS}")
        dd = {"device": device, "dtype": dtype}
        value_dim = fem_value_width(dim, num_heads)
        super().__init__(dim, num_heads, qkv_bias, qkv_features=2 * dim + value_dim, **dd)
        self.prior = prior
        self.qk_head_dim = self.head_dim
        self.value_dim = value_dim
        self.v_head_dim = self.value_dim // num_heads
        if rope and self.qk_head_dim % 4:
            raise ValueError(f"FreeEnergyMixer: rope needs d_k = dim / heads divisible by 4, got {self.qk_head_dim}")
        self.rope = rope
        self.rope_base = rope_base
        self.conv = GridDepthwiseConv(2 * dim + self.value_dim, 3, bias=False, **dd) if conv else None
        self.gates = KeptCastLinear(dim, 2 * self.value_dim, **dd)
        self.beta_param = nn.Parameter(torch.empty(num_heads, self.v_head_dim, **dd))
        self.build_output(attn_drop, proj_drop, value_features=self.value_dim, **dd)
        self.init_weights()

    def init_weights(self) -> None:
        """Initialise ``beta_param`` to 1.8 (beta_max ~ 1.95) and the depthwise conv (PyTorch's default)."""
        nn.init.constant_(self.beta_param, BETA_INIT)
        if self.conv is not None:
            self.conv.conv.reset_parameters()

    def beta_max(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Per-channel inverse temperature beta_max = softplus(p) + 1e-6, shape (h, d_v)."""
        return F.softplus(self.beta_param.to(dtype)) + _BETA_FLOOR

    def _prior_read(self, q: torch.Tensor, k: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """sum_i p_t(i) values_i for (B, N, h, D) inputs, in the values' dtype (the one :meth:`_value_dtype` picks)."""
        if self.prior == "linear":
            # The released prior: phi = ReLU + eps, out = num / max(den, eps), the feature map applied inside the op
            # (as a PyTorch expression it read the strided q and k twice, in four launches). (A ones column on the
            # values would carry the denominator too, but 2 d_v + 1 values pad the kernels' tiles to twice their
            # width.)
            return linear_attention(q, k, values, feature_map="relu_eps", normalize=True, clamp_denominator=True,
                                    eps=LINEAR_PRIOR_EPS)
        # d_k = C/h equals 2 d_v in preset A
        args = (q.transpose(1, 2), k.transpose(1, 2), values.transpose(1, 2))
        if values.dtype != q.dtype:
            # fp16 projections (see _value_dtype): attention in the values' fp32, outside autocast, which would cast
            # it back to fp16 (SDPA takes one dtype)
            with torch.autocast(q.device.type, enabled=False):
                out = softmax_attention(*(t.to(values.dtype) for t in args))
        else:
            out = softmax_attention(*args)
        return out.transpose(1, 2)

    def _value_dtype(self, projections: torch.dtype, acc: torch.dtype) -> torch.dtype:
        """The dtype the prior reads the doubled values in: the projections', as attention reads v (bf16 under
        autocast: the kernels multiply bf16 operands and accumulate in fp32, and exp(beta v - M) in (e^-80, 1] keeps
        bf16's full relative precision, fp32's exponent range). fp16 would flush the smaller exponentials to zero (its
        range ends near 6e-8; measured: 32% error of the softmax-prior mixer): with fp16 projections the prior reads
        fp32 values."""
        return acc if projections == torch.float16 else projections

    def prior_read(
            self, x: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The prior's read of the doubled values [v, exp(beta v - M)] of ``x`` (B, N, C): (read (B, N, h, 2 d_v) in the
        values' dtype (:meth:`_value_dtype`), M (B, 1, h, d_v) and beta (h, d_v) in fp32 (fp64 for fp64 inputs)).

        Values are clipped to |beta v| <= 40 for both reads; M is the (detached) max of beta v over tokens per
        (batch, head, channel), so every exponential is <= 1 (:func:`vitzoo.ops.free_energy_values`).
        """
        batch, num_tokens, dim = x.shape
        qkv = self.qkv(x)
        if self.conv is not None:
            qkv = self.conv(qkv, grid_size, num_prefix_tokens)
        q, k, v = qkv.split([dim, dim, self.value_dim], dim=-1)
        q = q.reshape(batch, num_tokens, self.num_heads, self.qk_head_dim)
        k = k.reshape(batch, num_tokens, self.num_heads, self.qk_head_dim)
        if self.rope:
            q = axial_rope(q, grid_size, num_prefix_tokens, self.rope_base)
            k = axial_rope(k, grid_size, num_prefix_tokens, self.rope_base)
        acc = torch.promote_types(v.dtype, torch.float32)
        # kept between inference forwards: two launches (softplus, add) a block otherwise
        beta = self.kept(kept_value_key((self.beta_param,), acc), lambda: self.beta_max(acc))
        values, shift = free_energy_values(v.reshape(batch, num_tokens, self.num_heads, self.v_head_dim), beta,
                                           self._value_dtype(q.dtype, acc))
        read = self._prior_read(q, k, values)
        return read, shift, beta

    def reads(
            self, x: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two reads of ``x`` (B, N, C): the mean mu and the free energy F, each (B, N, h, d_v) in fp32 (F restored
        exactly as (log(read + eps e^-M) + M) / beta)."""
        return free_energy_reads(*self.prior_read(x, grid_size, num_prefix_tokens))

    def mix(self, x: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
        # ``grid_size`` places the patches for ``rope`` and ``conv``. The reads, the gates and their product run in one
        # op (vitzoo.ops.free_energy_mix), in fp32, returning the gate logits' dtype, which ``proj`` takes.
        read, shift, beta = self.prior_read(x, grid_size, num_prefix_tokens)
        return free_energy_mix(read, shift, beta, self.gates(x))


# The forward branches on tensor properties (the accumulation dtype, the ops' backend by device and dtype), which FX
# cannot trace: the mixer is a leaf for timm's FX feature extraction.
register_notrace_module(FreeEnergyMixer)
