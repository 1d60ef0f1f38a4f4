"""H3's long convolution: the gated bidirectional long convolution o_t = sum_s Kbi(t - s) (q_t . k_s) v_s per head.

Kbi(l) = Kf(l) for l >= 0 plus Kb(-l) for l <= 0 is a two-sided kernel: a forward kernel and a kernel run on the
flipped sequence, summed (both include lag 0). The same o_t has two forms:

* Toeplitz: o = (T o (q k^T)) v with the (N, N) Toeplitz matrix T[t, s] = Kbi(t - s); O(N^2 d) matmul work
  (:func:`vitzoo.ops.toeplitz_attention`, which keeps the scores on chip on CUDA).
* FFT: o_t = sum_{d1} q_t,d1 (Kbi * (k_d1 v^T))_t, a long convolution of each of the d x d outer-product channels;
  O(d^2 N log N) work.

:func:`gated_long_conv` picks the cheaper one from N and d. Its inputs are laid out as attention's, (B, h, N, d). An
optional per-head ``skip`` weight adds to the lag-0 entry: H3's skip D (q_t . k_t) v_t is the diagonal of T.
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from ..ops import toeplitz_attention
from ..ops.ssm_kernel import toeplitz_lag_vector
from ..ops.toeplitz_attention import runs_kernels
from ..ops.utils import cast_to

# kv channels (d1 rows x d columns) convolved per checkpointed block: bounds the transient FFT buffers to
# B * H * N * 1024 complex values whatever the head dim, instead of the full B * H * N * d * d outer products.
_KV_CHANNELS_PER_BLOCK = 1024
# Path choice by cost: the Toeplitz-weighted attention does O(N^2 d) matmul work (16-bit under autocast), the FFT
# O(d^2 N log N) memory-bound fp32 work. Where the fused op's kernels run (CUDA) the Toeplitz form is taken at every
# N: it keeps no (N, N) buffer, and at 1024 px (N = 4097, d = 64) H3-T ran 731 img/s with it against 28 with the FFT
# form (H100, benchmarks/results/compare/h100.json). Elsewhere its PyTorch reference holds the (B, h, N, N) scores,
# and the FFT form takes over above N = 64 d: with the Toeplitz form in PyTorch products, H200, bf16, d = 64,
# B * N ~ 50k tokens, fwd+bwd: Toeplitz 2.6 / 4.4 / 14.3 ms against FFT 116 / 96 / 99 ms at N = 197 / 1025 / 4097
# (benchmarks/results/h3_paths/h200.json), the end of that range.
TOEPLITZ_MAX_TOKENS_PER_HEAD_DIM = 64


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


def _lag_zero(kernel_fwd: torch.Tensor, kernel_bwd: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
    """Kbi(0) = Kf(0) + Kb(0) (+ skip), shape (..., 1)."""
    lag_zero = kernel_fwd[..., :1] + kernel_bwd[..., :1]
    return lag_zero if skip is None else lag_zero + skip.unsqueeze(-1)


def bidirectional_long_conv(
        x: torch.Tensor, kernel_fwd: torch.Tensor, kernel_bwd: torch.Tensor, skip: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bidirectional long convolution along the last dim, via FFT.

    y_t = sum_{s <= t} kernel_fwd[t - s] x_s + sum_{s >= t} kernel_bwd[s - t] x_s, i.e. a causal convolution
    with ``kernel_fwd`` plus the same with ``kernel_bwd`` on the flipped sequence, flipped back (both include
    lag 0). Both directions share one FFT: the two-sided kernel is laid out circularly on n >= 2L - 1 points (the
    next fast FFT length), enough for lags -(L-1)..(L-1) not to wrap.

    Args:
        x: (..., L) signals.
        kernel_fwd: (..., L) kernel, broadcastable against ``x``.
        kernel_bwd: (..., L) kernel of the flipped direction, same shape as ``kernel_fwd``.
        skip: optional (...) weight added to lag 0 (``kernel_fwd``'s leading shape).

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
        [_lag_zero(kernel_fwd, kernel_bwd, skip), kernel_fwd[..., 1:], gap, kernel_bwd[..., 1:].flip(-1)], dim=-1
    )
    spectrum = torch.fft.rfft(x, n=n_fft) * torch.fft.rfft(two_sided, n=n_fft)
    return torch.fft.irfft(spectrum, n=n_fft)[..., :length]


def _gated_conv_block(
        q_rows: torch.Tensor,
        k_rows: torch.Tensor,
        v: torch.Tensor,
        kernel_fwd: torch.Tensor,
        kernel_bwd: torch.Tensor,
        skip: torch.Tensor | None,
) -> torch.Tensor:
    """sum over the given d1 rows of q_t,d1 * (Kbi * (k_d1 v^T))_t for q_rows, k_rows (B, H, c, N), v (B, H, d, N).

    Returns (B, H, d, N). Only c x d outer-product channels exist at a time.
    """
    kv = k_rows.unsqueeze(3) * v.unsqueeze(2)  # (B, H, c, d, N)
    y = bidirectional_long_conv(
        kv, kernel_fwd[:, None, None], kernel_bwd[:, None, None], None if skip is None else skip[:, None, None]
    )
    return (q_rows.unsqueeze(3) * y).sum(dim=2)


def gated_long_conv_fft(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kernel_fwd: torch.Tensor,
        kernel_bwd: torch.Tensor,
        skip: torch.Tensor | None = None,
) -> torch.Tensor:
    """o_t = sum_{d1} q_t,d1 (Kbi * (k_d1 v^T))_t via FFT, for q, k, v (B, H, N, d), kernels (H, N), skip (H,).

    Runs in fp32 (fp64 for fp64 inputs) whatever the inputs' precision: 16-bit FFTs would lose the long sums. The
    d x d outer-product channels are convolved in checkpointed blocks of d1 rows, so autograd keeps only the inputs
    (O(B H N d)) and each block's transient FFT buffers hold B H N * 1024 complex values. Returns (B, H, N, d) in
    that precision.
    """
    acc = torch.promote_types(q.dtype, torch.float32)
    # (B, H, d, N): the convolution runs over the last dim
    q, k, v = (t.transpose(-1, -2).to(acc) for t in (q, k, v))
    rows = max(1, _KV_CHANNELS_PER_BLOCK // q.shape[2])
    out = None
    for start in range(0, q.shape[2], rows):
        block = (q[:, :, start:start + rows], k[:, :, start:start + rows], v, kernel_fwd, kernel_bwd, skip)
        part = checkpoint(_gated_conv_block, *block, use_reentrant=False) if torch.is_grad_enabled() \
            else _gated_conv_block(*block)
        out = part if out is None else out + part
    return out.transpose(-1, -2)


def gated_long_conv_toeplitz(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kernel_fwd: torch.Tensor | None,
        kernel_bwd: torch.Tensor | None,
        skip: torch.Tensor | None = None,
        lags: torch.Tensor | None = None,
) -> torch.Tensor:
    """The same o_t as :func:`gated_long_conv_fft` as a Toeplitz-weighted attention sum_s T[t, s] (q_t . k_s) v_s, by
    :func:`vitzoo.ops.toeplitz_attention`.

    O(N^2 d) work on matmul units instead of O(d^2 N log N) FFT work, in the precision attention runs in (16-bit
    products with fp32 accumulation under autocast); the (B, H, N, N) scores are never kept (on CUDA they stay on
    chip). ``lags``: T's lag vector as :func:`vitzoo.ops.ssm_kernel.toeplitz_lag_vector` builds it, when the caller
    has it (the kernels and skip are then not read and may be None). Returns (B, H, N, d), a view of the op's
    (B, N, H, d) output.
    """
    if lags is not None and torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (kernel_fwd, kernel_bwd, skip)):
        raise ValueError("gated_long_conv_toeplitz: kept Toeplitz lags carry no gradient to the kernels or the skip; "
                         "pass them only where those need none")
    if lags is None:
        lags = toeplitz_lag_vector(kernel_fwd, kernel_bwd, skip)
    # (B, H, N, d) -> the op's (B, N, H, d): views, so projections laid out as (B, N, H, d) are read in place
    dtype = _product_dtype(q, k, v)
    q, k, v = (cast_to(t.transpose(1, 2), dtype) for t in (q, k, v))
    with torch.autocast(q.device.type, enabled=False):
        return toeplitz_attention(q, k, v, lags).transpose(1, 2)


def _product_dtype(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.dtype:
    """The dtype the Toeplitz op's products run in: autocast's where it is on (as attention's), else promoted."""
    device_type = q.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)


def gated_long_conv(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kernel_fwd: torch.Tensor | None,
        kernel_bwd: torch.Tensor | None,
        skip: torch.Tensor | None = None,
        lags: torch.Tensor | None = None,
) -> torch.Tensor:
    """o_t = sum_s Kbi(t - s) (q_t . k_s) v_s (+ skip (q_t . k_t) v_t) for q, k, v (B, H, N, d), kernels (H, N) and
    an optional per-head skip weight (H,); returns (B, H, N, d).

    The Toeplitz form where :func:`uses_toeplitz` says so (``lags``: T's lag vector, when the caller keeps it), the
    FFT form above.
    """
    if uses_toeplitz(q, k, v):
        return gated_long_conv_toeplitz(q, k, v, kernel_fwd, kernel_bwd, skip, lags)
    if kernel_fwd is None or kernel_bwd is None:
        raise ValueError("gated_long_conv: the FFT form (this length and device) needs kernel_fwd and kernel_bwd; "
                         "lags serve the Toeplitz form only")
    return gated_long_conv_fft(q, k, v, kernel_fwd, kernel_bwd, skip)


def uses_toeplitz(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether :func:`gated_long_conv` takes the Toeplitz form for q, k, v (B, H, N, d): wherever the fused op runs its
    kernels, elsewhere up to N = ``TOEPLITZ_MAX_TOKENS_PER_HEAD_DIM`` * d."""
    num_tokens, head_dim = q.shape[-2], q.shape[-1]
    return num_tokens <= TOEPLITZ_MAX_TOKENS_PER_HEAD_DIM * head_dim or runs_kernels(
        q.device, _product_dtype(q, k, v), head_dim, v.shape[-1])
