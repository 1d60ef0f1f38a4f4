"""Bidirectional H3 for images (H3 layer as analysed by Li, Rawat & Oymak, NeurIPS 2024; HazyResearch H3).

Per head (head_dim d), with the SSM kernel K shared across the d x d entries of the head's outer products:

    k   <- GridDepthwiseConv3x3(k)                         (stands in for the causal shift SSM; cls unconvolved)
    y_t  = sum_s Kbi(t - s) k_s v_s^T + D k_t v_t^T        (bidirectional long convolution + skip)
    o_t  = sum_{d1} q_t,d1 y_t,d1,:  = sum_s Kbi(t - s) (q_t . k_s) v_s + D (q_t . k_t) v_t

with Kbi(l) = Kf(l) for l >= 0 plus Kb(-l) for l <= 0: a forward diagonal SSM kernel and a separate one run on
the flipped sequence, summed. Both kernels are S4D-Lin diagonal SSMs discretised with zero-order hold. The core
runs through :func:`vitzoo.layers.long_conv.gated_long_conv`: as the Toeplitz-weighted attention above (in
attention's precision: 16-bit matrix products accumulating in fp32 under autocast; on CUDA at every length, elsewhere
for short sequences), or for long sequences off CUDA as an FFT long convolution (O(N log N) per kv channel, in
fp32). ``docs/mixers.md`` (Bidirectional H3) states the math and the zoo's choices. ``attn_drop`` drops o (there is
no attention matrix).

Optimiser hint: the SSM parameters (A, B, log dt) carry ``param._optim = {'weight_decay': 0.0, 'lr': 1e-3}``;
a trainer should put them in a group without weight decay and with lr = min(base lr, 1e-3). The mixer's
``no_weight_decay()`` names them as well.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from timm.layers import register_notrace_module

from ..ops import ssm_kernels, ssm_toeplitz_lags
from ..ops.utils import cast_to
from .base import TokenMixer
from .kept import KeepsValue, kept_value_key
from .local_conv import GridDepthwiseConv
from .long_conv import gated_long_conv, uses_toeplitz

SSM_OPTIM = {"weight_decay": 0.0, "lr": 1e-3}  # per-parameter hint; lr is an upper bound (H3 / safari)
_DT_RANGE = (1e-3, 1e-1)


class DiagonalSSMKernel(KeepsValue, nn.Module):
    """Two S4D-Lin diagonal SSM convolution kernels per head (forward and flipped direction), ZOH-discretised.

    Per direction and head, with d_state/2 complex modes (their conjugates make the kernel real):
    A_n = -exp(log_A_real_n) + i A_imag_n (init -1/2 + i pi n), B_n (init 1), C_n ~ CN(0, 1),
    dt = exp(log_dt) with log dt ~ U[log 1e-3, log 1e-1];
    K(l) = 2 Re sum_n C_n B_n (exp(dt A_n) - 1) / A_n exp(dt A_n l).
    Complex parameters are stored as real (..., 2) tensors, and the kernel is computed in real arithmetic (the
    cos / sin / exp of the real and imaginary parts), which ONNX can express.

    Args:
        num_heads: kernels per direction.
        d_state: state size (even): d_state/2 conjugate pairs of modes.
        device: device of the parameters.
        dtype: dtype of the parameters.
    """

    optim_param_names = ("log_dt", "log_A_real", "A_imag", "B")  # C keeps the default group, as in H3

    def __init__(self, num_heads: int, d_state: int = 64, device=None, dtype=None) -> None:
        super().__init__()
        if d_state < 2 or d_state % 2:
            raise ValueError(f"DiagonalSSMKernel: d_state must be a positive even number, got {d_state}")
        dd = {"device": device, "dtype": dtype}
        modes = d_state // 2
        self.log_dt = nn.Parameter(torch.empty(2, num_heads, **dd))
        self.log_A_real = nn.Parameter(torch.empty(2, num_heads, modes, **dd))
        self.A_imag = nn.Parameter(torch.empty(2, num_heads, modes, **dd))
        self.B = nn.Parameter(torch.empty(2, num_heads, modes, 2, **dd))
        self.C = nn.Parameter(torch.empty(2, num_heads, modes, 2, **dd))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """S4D-Lin init, and the optimiser hints (re-set here: a meta -> device move may replace parameters)."""
        with torch.no_grad():
            low, high = (math.log(t) for t in _DT_RANGE)
            self.log_dt.uniform_(low, high)
            self.log_A_real.fill_(math.log(0.5))
            self.A_imag.copy_(math.pi * torch.arange(self.A_imag.shape[-1], device=self.A_imag.device))
            self.B.zero_()
            self.B[..., 0] = 1.0
            self.C.normal_(std=math.sqrt(0.5))  # unit-variance complex normal
        for name in self.optim_param_names:
            getattr(self, name)._optim = dict(SSM_OPTIM)

    def forward(self, length: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward and flipped-direction kernels, each (H, length), in ``dtype`` (fp32 or fp64).

        They depend on the parameters only (one launch on CUDA, about sixty small ops on the reference path): when
        no gradient is recorded (and outside torch.compile, tracing and CUDA-graph capture) they are kept until a
        parameter changes (its version counter or storage) or another length, dtype or device is asked for.
        """
        return self.kept(kept_value_key(self.ssm_parameters(), length, dtype), lambda: self.kernels(length, dtype))

    def ssm_parameters(self) -> tuple[torch.Tensor, ...]:
        """(log_dt, log_A_real, A_imag, B, C): what the kernels are computed from (attribute reads, cheaper than
        walking ``parameters()`` on every forward)."""
        return self.log_dt, self.log_A_real, self.A_imag, self.B, self.C

    def kernels(self, length: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward and flipped-direction kernels computed from the parameters (what :meth:`forward` caches), by
        :func:`vitzoo.ops.ssm_kernels` (one kernel launch each way on CUDA)."""
        kernels = ssm_kernels(*(p.to(dtype) for p in self.ssm_parameters()), length)
        return kernels[0], kernels[1]

    def toeplitz_lags(self, length: int, dtype: torch.dtype, skip: torch.Tensor) -> torch.Tensor:
        """The lag vector (H, 2 length - 1) of both kernels' Toeplitz matrix with ``skip`` (H,) on its diagonal, in
        ``dtype`` (:func:`vitzoo.ops.ssm_toeplitz_lags`: written in place by one launch each way on CUDA)."""
        return ssm_toeplitz_lags(*(p.to(dtype) for p in self.ssm_parameters()), skip.to(dtype), length)


class BidirectionalH3(KeepsValue, TokenMixer):
    """Non-causal H3 token mixer: (B, N, C) -> (B, N, C).

    ``qkv`` (C -> 3C, with bias), ``k_conv`` (3x3 depthwise on the patch grid, prefix tokens unconvolved),
    per-head outer products k v^T filtered by ``ssm`` (bidirectional diagonal-SSM long convolution) plus the
    per-head skip ``D``, read by q, then ``proj``.

    Cost: the (B, N, h, d, d) outer products are never held. The core is the Toeplitz-weighted attention
    sum_s T[t, s] (q_t . k_s) v_s (O(B h N^2 d) matmul work, :func:`vitzoo.ops.toeplitz_attention`, scores on chip)
    wherever that op's kernels run, elsewhere up to N = 64 d (its reference holds transient (B, h, N, N) scores);
    above that, the FFT long convolution over blocks of d1 rows (at most 1024 kv channels each, transient buffers
    O(B h N * 1024), O(B h d^2 N log N) work). Neither keeps its transient buffers: autograd keeps O(B h N d) per
    layer (and the lags), and the backward recomputes the scores (Toeplitz) or reruns each block (FFT).

    Args:
        dim: token width C.
        num_heads: number of heads h; head_dim = C / h.
        qkv_bias: bias on the q, k, v projections.
        attn_drop: dropout on the mixed values before ``proj`` (there is no attention matrix to drop from).
        proj_drop: dropout after the output projection.
        device: device of the parameters.
        dtype: dtype of the parameters.
        d_state: SSM state size per kernel (d_state/2 complex modes).
    """

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            qkv_bias: bool = True,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            device=None,
            dtype=None,
            d_state: int = 64,
    ) -> None:
        dd = {"device": device, "dtype": dtype}
        super().__init__(dim, num_heads, qkv_bias, qkv_features=3 * dim, **dd)
        self.k_conv = GridDepthwiseConv(dim, kernel_size=3, **dd)
        self.ssm = DiagonalSSMKernel(num_heads, d_state, **dd)
        self.D = nn.Parameter(torch.empty(num_heads, **dd))
        self.build_output(attn_drop, proj_drop, **dd)
        self.init_weights()

    def init_weights(self) -> None:
        """Initialise everything that is not an ``nn.Linear``: the conv (PyTorch default), the SSM, D ~ N(0, 1)."""
        self.k_conv.conv.reset_parameters()
        self.ssm.reset_parameters()
        nn.init.normal_(self.D)

    def no_weight_decay(self) -> set[str]:
        """Names (relative to the mixer) of the SSM parameters that take no weight decay."""
        return {f"ssm.{name}" for name in DiagonalSSMKernel.optim_param_names}

    def mix(self, x: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
        batch, num_tokens, dim = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        k = self.k_conv(k, grid_size, num_prefix_tokens)
        # Attention's layout (B, h, N, d), views of the projections; the core keeps their precision where it runs as
        # matrix products (see gated_long_conv). The SSM kernels are fp32 (fp64 for fp64 inputs), and the skip D is
        # their lag-0 entry: D (q_t . k_t) v_t is the diagonal of the Toeplitz weighting.
        shape = (batch, num_tokens, self.num_heads, self.head_dim)
        q, k, v = (t.reshape(shape).transpose(1, 2) for t in (q, k, v))
        acc = torch.promote_types(v.dtype, torch.float32)
        kernel_fwd = kernel_bwd = skip = lags = None
        if uses_toeplitz(q, k, v):
            # the Toeplitz lags depend on the parameters only: kept between inference forwards, and then the only
            # thing read; where a gradient is recorded they are computed in the graph
            key = kept_value_key((*self.ssm.ssm_parameters(), self.D), num_tokens, acc)
            lags = self.kept(key, lambda: self.ssm.toeplitz_lags(num_tokens, acc, self.D))
        else:
            kernel_fwd, kernel_bwd = self.ssm(num_tokens, acc)
            skip = cast_to(self.D, acc)
        out = gated_long_conv(q, k, v, kernel_fwd, kernel_bwd, skip=skip, lags=lags)
        # In the projections' dtype (the FFT path returns fp32), which ``proj`` takes as it is, also under autocast.
        return cast_to(out.transpose(1, 2).reshape(batch, num_tokens, dim), v.dtype)


# The forward branches on tensor properties (the accumulation dtype and the Toeplitz / FFT choice by token count),
# which FX cannot trace: the mixer is a leaf for timm's FX feature extraction.
register_notrace_module(BidirectionalH3)
