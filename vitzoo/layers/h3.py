"""Bidirectional H3 for images (H3 layer as analysed by Li, Rawat & Oymak, NeurIPS 2024; HazyResearch H3).

Per head (head_dim d), with the SSM kernel K shared across the d x d entries of the head's outer products:

    k   <- GridDepthwiseConv3x3(k)                         (stands in for the causal shift SSM; cls unconvolved)
    y_t  = sum_s Kbi(t - s) k_s v_s^T + D k_t v_t^T        (bidirectional long convolution + skip)
    o_t  = sum_{d1} q_t,d1 y_t,d1,:  = sum_s Kbi(t - s) (q_t . k_s) v_s + D (q_t . k_t) v_t

with Kbi(l) = Kf(l) for l >= 0 plus Kb(-l) for l <= 0: a forward diagonal SSM kernel and a separate one run on
the flipped sequence, summed. Both kernels are S4D-Lin diagonal SSMs discretised with zero-order hold. The core
runs in fp32: as the Toeplitz-weighted attention above for short sequences, and as an FFT long convolution
(O(N log N) per kv channel) for long ones. ``docs/mixers.md`` (Bidirectional H3) states the math and the zoo's
choices.

Optimiser hint: the SSM parameters (A, B, log dt) carry ``param._optim = {'weight_decay': 0.0, 'lr': 1e-3}``;
a trainer should put them in a group without weight decay and with lr = min(base lr, 1e-3). The mixer's
``no_weight_decay()`` names them as well.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from timm.layers import register_notrace_module
from torch.utils.checkpoint import checkpoint

from ._common import GridDepthwiseConv, check_grid

SSM_OPTIM = {"weight_decay": 0.0, "lr": 1e-3}  # per-parameter hint; lr is an upper bound (H3 / safari)
_DT_RANGE = (1e-3, 1e-1)
# kv channels (d1 rows x d columns) convolved per checkpointed block: bounds the transient FFT buffers to
# B * H * N * 1024 complex values whatever the head dim, instead of the full B * H * N * d * d outer products.
_KV_CHANNELS_PER_BLOCK = 1024
# Path choice by cost: the Toeplitz-weighted attention does O(N^2 d) matmul work, the FFT O(d^2 N log N)
# memory-bound work. H200, d=64, B*N ~ 50k, fwd+bwd: Toeplitz 8.5 / 65 / 1162 ms vs FFT 142 / 132 / 176 ms at
# N = 197 / 785 / 3137, so the switch sits near N = 24 d.
TOEPLITZ_MAX_TOKENS_PER_HEAD_DIM = 24


def fast_fft_length(minimum: int) -> int:
    """The smallest n >= ``minimum`` with no prime factor above 7. FFT libraries (cuFFT, pocketfft) have fast kernels
    for such lengths; a large prime factor (2 * 4097 = 2 * 17 * 241 at 1024 px) sends them to a several times
    slower general algorithm (Bluestein). Such numbers are dense (the next one is a few steps away), so counting up
    is quick. ``minimum`` may be a traced size (a 0-dim tensor under torch.jit.trace, as in the fvcore count): it is
    read as a plain int, since in-place arithmetic on it would change ``n`` too."""
    n = max(int(minimum), 1)
    while True:
        rest = n
        for prime in (2, 3, 5, 7):
            while rest % prime == 0:
                rest //= prime
        if rest == 1:
            return n
        n += 1


def bidirectional_long_conv(x: torch.Tensor, kernel_fwd: torch.Tensor, kernel_bwd: torch.Tensor) -> torch.Tensor:
    """Bidirectional long convolution along the last dim, via FFT.

    y_t = sum_{s <= t} kernel_fwd[t - s] x_s + sum_{s >= t} kernel_bwd[s - t] x_s, i.e. a causal convolution
    with ``kernel_fwd`` plus the same with ``kernel_bwd`` on the flipped sequence, flipped back (both include
    lag 0). Both directions share one FFT: the two-sided kernel is laid out circularly on n >= 2L - 1 points (the
    next fast FFT length), enough for lags -(L-1)..(L-1) not to wrap.

    Args:
        x: (..., L) signals.
        kernel_fwd: (..., L) kernel, broadcastable against ``x``.
        kernel_bwd: (..., L) kernel of the flipped direction, same shape as ``kernel_fwd``.

    Returns:
        (..., L) in the promoted dtype of the inputs.
    """
    length = x.shape[-1]
    if kernel_fwd.shape[-1] != length or kernel_bwd.shape[-1] != length:
        raise ValueError(
            f"bidirectional_long_conv: kernels must have length {length}, got {kernel_fwd.shape[-1]} and "
            f"{kernel_bwd.shape[-1]}"
        )
    n_fft = fast_fft_length(2 * length - 1)
    # Circular layout: lag l >= 0 at index l, lag -l at index n_fft - l; the indices L .. n_fft - L are never reached.
    gap = kernel_fwd.new_zeros((*kernel_fwd.shape[:-1], n_fft - 2 * length + 1))
    two_sided = torch.cat(
        [kernel_fwd[..., :1] + kernel_bwd[..., :1], kernel_fwd[..., 1:], gap, kernel_bwd[..., 1:].flip(-1)], dim=-1
    )
    spectrum = torch.fft.rfft(x, n=n_fft) * torch.fft.rfft(two_sided, n=n_fft)
    return torch.fft.irfft(spectrum, n=n_fft)[..., :length]


def _gated_conv_block(
        q_rows: torch.Tensor,
        k_rows: torch.Tensor,
        v: torch.Tensor,
        kernel_fwd: torch.Tensor,
        kernel_bwd: torch.Tensor,
) -> torch.Tensor:
    """sum over the given d1 rows of q_t,d1 * (Kbi * (k_d1 v^T))_t for q_rows, k_rows (B, H, c, N), v (B, H, d, N).

    Returns (B, H, d, N). Only c x d outer-product channels exist at a time.
    """
    kv = k_rows.unsqueeze(3) * v.unsqueeze(2)  # (B, H, c, d, N)
    y = bidirectional_long_conv(kv, kernel_fwd[:, None, None], kernel_bwd[:, None, None])
    return (q_rows.unsqueeze(3) * y).sum(dim=2)


def gated_long_conv_fft(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_fwd: torch.Tensor, kernel_bwd: torch.Tensor
) -> torch.Tensor:
    """o_t = sum_{d1} q_t,d1 (Kbi * (k_d1 v^T))_t via FFT, for q, k, v (B, H, d, N) and kernels (H, N).

    The d x d outer-product channels are convolved in checkpointed blocks of d1 rows, so autograd keeps only
    the inputs (O(B H N d)) and each block's transient FFT buffers hold B H N * 1024 complex values.
    Returns (B, H, d, N).
    """
    rows = max(1, _KV_CHANNELS_PER_BLOCK // q.shape[2])
    out = None
    for start in range(0, q.shape[2], rows):
        block = (q[:, :, start:start + rows], k[:, :, start:start + rows], v, kernel_fwd, kernel_bwd)
        part = checkpoint(_gated_conv_block, *block, use_reentrant=False) if torch.is_grad_enabled() \
            else _gated_conv_block(*block)
        out = part if out is None else out + part
    return out


def toeplitz_matrix(kernel_fwd: torch.Tensor, kernel_bwd: torch.Tensor) -> torch.Tensor:
    """The (..., N, N) two-sided Toeplitz matrix T[t, s] = Kf[t - s] (t >= s) + Kb[s - t] (s >= t)."""
    length = kernel_fwd.shape[-1]
    # T[t, s] = p[s - t + N - 1] for p = [Kf[N-1], ..., Kf[1], Kf[0] + Kb[0], Kb[1], ..., Kb[N-1]]: row t is the
    # window of p starting at N - 1 - t. Sliding windows (unfold) have a cheap backward, where a gather by a lag
    # index matrix falls back to a sort-based scatter (about 1.7 ms a call at N = 197 on the H200).
    lags = torch.cat([kernel_fwd[..., 1:].flip(-1), kernel_fwd[..., :1] + kernel_bwd[..., :1], kernel_bwd[..., 1:]],
                     dim=-1)
    return lags.unfold(-1, length, 1).flip(-2)


def _toeplitz_attention(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_fwd: torch.Tensor, kernel_bwd: torch.Tensor
) -> torch.Tensor:
    # Under autocast the matmuls would drop to bf16: the core stays in the inputs' precision.
    with torch.autocast(device_type=q.device.type, enabled=False):
        scores = q.transpose(-1, -2) @ k  # (B, H, N, N): q_t . k_s
        return v @ (scores * toeplitz_matrix(kernel_fwd, kernel_bwd)).transpose(-1, -2)


def gated_long_conv_toeplitz(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_fwd: torch.Tensor, kernel_bwd: torch.Tensor
) -> torch.Tensor:
    """The same o_t as :func:`gated_long_conv_fft` as a Toeplitz-weighted attention sum_s T[t, s] (q_t . k_s) v_s.

    O(N^2 d) work on matmul units instead of O(d^2 N log N) FFT work; checkpointed, so the (B, H, N, N)
    scores are transient (autograd keeps the O(B H N d) inputs). Returns (B, H, d, N).
    """
    if torch.is_grad_enabled():
        return checkpoint(_toeplitz_attention, q, k, v, kernel_fwd, kernel_bwd, use_reentrant=False)
    return _toeplitz_attention(q, k, v, kernel_fwd, kernel_bwd)


class DiagonalSSMKernel(nn.Module):
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
        """The forward and flipped-direction kernels, each (H, length), in ``dtype`` (fp32 or fp64)."""
        dt = self.log_dt.to(dtype).exp().unsqueeze(-1)  # (2, H, 1)
        a_re, a_im = -self.log_A_real.to(dtype).exp(), self.A_imag.to(dtype)
        b_re, b_im = self.B.to(dtype).unbind(-1)
        c_re, c_im = self.C.to(dtype).unbind(-1)
        x, y = dt * a_re, dt * a_im  # dt A = x + i y
        # expm1(x + i y) = (e^x cos y - 1) + i e^x sin y; the real part as expm1(x) cos y - 2 sin^2(y / 2) keeps
        # its precision for small dt A, as complex expm1 does.
        e_re = torch.expm1(x) * torch.cos(y) - 2 * torch.sin(0.5 * y).square()
        e_im = torch.exp(x) * torch.sin(y)
        # ZOH: coeff = C B (exp(dt A) - 1) / A, complex products and the quotient written out
        cb_re, cb_im = c_re * b_re - c_im * b_im, c_re * b_im + c_im * b_re
        n_re, n_im = cb_re * e_re - cb_im * e_im, cb_re * e_im + cb_im * e_re
        a_sq = a_re.square() + a_im.square()
        coeff_re, coeff_im = (n_re * a_re + n_im * a_im) / a_sq, (n_im * a_re - n_re * a_im) / a_sq
        # Re(coeff exp(dt A l)) = e^(x l) (coeff_re cos(y l) - coeff_im sin(y l)), (2, H, modes, L)
        positions = torch.arange(length, device=dt.device, dtype=dtype)
        decay = torch.exp(x.unsqueeze(-1) * positions)
        angle = y.unsqueeze(-1) * positions
        kernels = 2 * (decay * (coeff_re.unsqueeze(-1) * torch.cos(angle) - coeff_im.unsqueeze(-1) * torch.sin(angle)))
        kernels = kernels.sum(dim=2)
        return kernels[0], kernels[1]


class BidirectionalH3(nn.Module):
    """Non-causal H3 token mixer: (B, N, C) -> (B, N, C).

    ``qkv`` (C -> 3C, with bias), ``k_conv`` (3x3 depthwise on the patch grid, prefix tokens unconvolved),
    per-head outer products k v^T filtered by ``ssm`` (bidirectional diagonal-SSM long convolution) plus the
    per-head skip ``D``, read by q, then ``proj``.

    Cost: the (B, N, h, d, d) outer products are never held. Up to N = 24 d the core is the Toeplitz-weighted
    attention sum_s T[t, s] (q_t . k_s) v_s (O(B h N^2 d) matmul work, transient (B, h, N, N) scores); above,
    the FFT long convolution over blocks of d1 rows (at most 1024 kv channels each, transient buffers
    O(B h N * 1024), O(B h d^2 N log N) work). Both run under activation checkpointing, so autograd keeps
    O(B h N d) per layer and the backward recomputes the core once.

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
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"BidirectionalH3: dim={dim} must be divisible by num_heads={num_heads}")
        dd = {"device": device, "dtype": dtype}
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **dd)
        self.k_conv = GridDepthwiseConv(dim, kernel_size=3, **dd)
        self.ssm = DiagonalSSMKernel(num_heads, d_state, **dd)
        self.D = nn.Parameter(torch.empty(num_heads, **dd))
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.init_weights()

    def init_weights(self) -> None:
        """Initialise everything that is not an ``nn.Linear``: the conv (PyTorch default), the SSM, D ~ N(0, 1)."""
        self.k_conv.conv.reset_parameters()
        self.ssm.reset_parameters()
        nn.init.normal_(self.D)

    def no_weight_decay(self) -> set[str]:
        """Names (relative to the mixer) of the SSM parameters that take no weight decay."""
        return {f"ssm.{name}" for name in DiagonalSSMKernel.optim_param_names}

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
        """Mix the tokens of ``x`` (B, N, C) with N = num_prefix_tokens + H * W in row-major grid order."""
        check_grid(x, grid_size, num_prefix_tokens)
        batch, num_tokens, dim = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        k = self.k_conv(k, grid_size, num_prefix_tokens)

        # The core runs in fp32 (fp64 for fp64 inputs) through elementwise ops and FFTs only, which autocast
        # leaves alone. Layout (B, h, d, N): the FFT runs over the last dim.
        acc = torch.promote_types(v.dtype, torch.float32)
        shape = (batch, num_tokens, self.num_heads, self.head_dim)
        q, k, v = (t.to(acc).view(shape).permute(0, 2, 3, 1) for t in (q, k, v))
        kernel_fwd, kernel_bwd = self.ssm(num_tokens, acc)

        skip = self.D.to(acc)[:, None, None] * (q * k).sum(dim=2, keepdim=True) * v
        use_fft = num_tokens > TOEPLITZ_MAX_TOKENS_PER_HEAD_DIM * self.head_dim
        out = skip + (gated_long_conv_fft if use_fft else gated_long_conv_toeplitz)(q, k, v, kernel_fwd, kernel_bwd)

        out = out.permute(0, 3, 1, 2).reshape(batch, num_tokens, dim).to(x.dtype)
        return self.proj_drop(self.proj(self.attn_drop(out)))


# The forward branches on tensor properties (the accumulation dtype and the Toeplitz / FFT choice by token count),
# which FX cannot trace: the mixer is a leaf for timm's FX feature extraction.
register_notrace_module(BidirectionalH3)
