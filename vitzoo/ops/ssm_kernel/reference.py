"""Convolution kernels of S4D-Lin diagonal state-space models, zero-order hold, in real arithmetic.

Per kernel r (a row: one direction of one head), with M complex modes n (their conjugates make the kernel real),
dt = exp(log_dt_r), A_n = -exp(log_A_real_n) + i A_imag_n and complex B_n, C_n stored as real (..., 2) pairs:

    K_r(l) = 2 Re sum_n C_n B_n (exp(dt A_n) - 1) / A_n exp(dt A_n l),        l = 0 .. L - 1

computed with real exp / cos / sin (no complex tensors, so a model using it exports to ONNX), and with the real part
of exp(dt A) - 1 written as expm1(x) cos y - 2 sin^2(y / 2) (x + i y = dt A) so it keeps its precision when dt A is
small, as a complex expm1 would. fp32 (fp64 for fp64 inputs).

H3 reads its two directions' kernels (the parameters' first dim) as one lag vector of a two-sided Toeplitz matrix,
:func:`ssm_toeplitz_lags_reference`: [Kf(L-1), ..., Kf(1), Kf(0) + Kb(0) (+ skip), Kb(1), ..., Kb(L-1)].
"""
from __future__ import annotations

import torch


def check_inputs(log_dt: torch.Tensor, log_a_real: torch.Tensor, a_imag: torch.Tensor, b: torch.Tensor,
                 c: torch.Tensor, length: int) -> None:
    """The contract shared by the reference and the kernels."""
    if log_a_real.dim() < 1 or tuple(log_dt.shape) != tuple(log_a_real.shape[:-1]):
        raise ValueError(f"ssm_kernels: log_dt must be (...,) and log_a_real (..., M), got {tuple(log_dt.shape)} and "
                         f"{tuple(log_a_real.shape)}")
    modes = tuple(log_a_real.shape)
    for name, tensor, shape in (("a_imag", a_imag, modes), ("b", b, (*modes, 2)), ("c", c, (*modes, 2))):
        if tuple(tensor.shape) != shape:
            raise ValueError(f"ssm_kernels: {name} must be {shape}, got {tuple(tensor.shape)}")
    if int(length) < 1:
        raise ValueError(f"ssm_kernels: length must be at least 1, got {length}")


def ssm_kernels_reference(log_dt: torch.Tensor, log_a_real: torch.Tensor, a_imag: torch.Tensor, b: torch.Tensor,
                          c: torch.Tensor, length: int) -> torch.Tensor:
    """Plain PyTorch :func:`vitzoo.ops.ssm_kernels` (same arguments): the kernels (..., L) of every row of modes, the
    specification of the Triton kernels."""
    check_inputs(log_dt, log_a_real, a_imag, b, c, length)
    acc = torch.promote_types(log_dt.dtype, torch.float32)
    dt = log_dt.to(acc).exp().unsqueeze(-1)  # (..., 1)
    a_re, a_im = -log_a_real.to(acc).exp(), a_imag.to(acc)
    b_re, b_im = b.to(acc).unbind(-1)
    c_re, c_im = c.to(acc).unbind(-1)
    x, y = dt * a_re, dt * a_im  # dt A = x + i y
    e_re = torch.expm1(x) * torch.cos(y) - 2 * torch.sin(0.5 * y).square()
    e_im = torch.exp(x) * torch.sin(y)
    # ZOH: coeff = C B (exp(dt A) - 1) / A, complex products and the quotient written out
    cb_re, cb_im = c_re * b_re - c_im * b_im, c_re * b_im + c_im * b_re
    n_re, n_im = cb_re * e_re - cb_im * e_im, cb_re * e_im + cb_im * e_re
    a_sq = a_re.square() + a_im.square()
    coeff_re, coeff_im = (n_re * a_re + n_im * a_im) / a_sq, (n_im * a_re - n_re * a_im) / a_sq
    # Re(coeff exp(dt A l)) = e^(x l) (coeff_re cos(y l) - coeff_im sin(y l)), (..., M, L)
    positions = torch.arange(int(length), device=dt.device, dtype=acc)
    decay = torch.exp(x.unsqueeze(-1) * positions)
    angle = y.unsqueeze(-1) * positions
    terms = decay * (coeff_re.unsqueeze(-1) * torch.cos(angle) - coeff_im.unsqueeze(-1) * torch.sin(angle))
    return 2 * terms.sum(dim=-2)


def check_lags_inputs(log_dt: torch.Tensor, log_a_real: torch.Tensor, a_imag: torch.Tensor, b: torch.Tensor,
                      c: torch.Tensor, skip: torch.Tensor | None, length: int) -> None:
    """The contract of :func:`ssm_toeplitz_lags_reference` and its kernels."""
    check_inputs(log_dt, log_a_real, a_imag, b, c, length)
    if log_dt.dim() < 1 or log_dt.shape[0] != 2:
        raise ValueError(f"ssm_toeplitz_lags: the parameters' first dim must hold the two directions, got log_dt of "
                         f"shape {tuple(log_dt.shape)}")
    if skip is not None and tuple(skip.shape) != tuple(log_dt.shape[1:]):
        raise ValueError(f"ssm_toeplitz_lags: skip must be {tuple(log_dt.shape[1:])}, got {tuple(skip.shape)}")


def ssm_toeplitz_lags_reference(log_dt: torch.Tensor, log_a_real: torch.Tensor, a_imag: torch.Tensor,
                                b: torch.Tensor, c: torch.Tensor, skip: torch.Tensor | None,
                                length: int) -> torch.Tensor:
    """The lag vector (..., 2L - 1) of T[t, s] = Kf(t - s) (t >= s) + Kb(s - t) (s >= t) (+ skip where s = t), with
    T[t, s] = lags[s - t + L - 1], from parameters whose first dim is the direction (forward, flipped) and an optional
    skip (...,): [Kf(L-1), ..., Kf(1), Kf(0) + Kb(0) (+ skip), Kb(1), ..., Kb(L-1)], in the kernels' precision."""
    check_lags_inputs(log_dt, log_a_real, a_imag, b, c, skip, length)
    return toeplitz_lag_vector(*ssm_kernels_reference(log_dt, log_a_real, a_imag, b, c, length).unbind(0), skip)


def toeplitz_lag_vector(kernel_fwd: torch.Tensor, kernel_bwd: torch.Tensor,
                        skip: torch.Tensor | None = None) -> torch.Tensor:
    """The (..., 2L - 1) lag vector of two (..., L) kernels and an optional skip (...,):
    [Kf(L-1), ..., Kf(1), Kf(0) + Kb(0) (+ skip), Kb(1), ..., Kb(L-1)], in the kernels' dtype."""
    lag_zero = kernel_fwd[..., :1] + kernel_bwd[..., :1]
    if skip is not None:
        lag_zero = lag_zero + skip.to(lag_zero.dtype).unsqueeze(-1)
    return torch.cat([kernel_fwd[..., 1:].flip(-1), lag_zero, kernel_bwd[..., 1:]], dim=-1)
