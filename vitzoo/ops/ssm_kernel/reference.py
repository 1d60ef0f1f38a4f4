"""Convolution kernels of S4D-Lin diagonal state-space models, zero-order hold, in real arithmetic.

Per kernel r (a row: one direction of one head), with M complex modes n (their conjugates make the kernel real),
dt = exp(log_dt_r), A_n = -exp(log_A_real_n) + i A_imag_n and complex B_n, C_n stored as real (..., 2) pairs:

    K_r(l) = 2 Re sum_n C_n B_n (exp(dt A_n) - 1) / A_n exp(dt A_n l),        l = 0 .. L - 1

computed with real exp / cos / sin (no complex tensors, so a model using it exports to ONNX), and with the real part
of exp(dt A) - 1 written as expm1(x) cos y - 2 sin^2(y / 2) (x + i y = dt A) so it keeps its precision when dt A is
small, as a complex expm1 would. fp32 (fp64 for fp64 inputs).
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
