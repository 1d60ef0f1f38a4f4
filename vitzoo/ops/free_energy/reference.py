"""FEM's two ops around its prior (``vitzoo/layers/fem.py`` states the mixer).

The values the prior reads, per (batch, head, value channel j), over the tokens i, in fp32 (fp64 for fp64 inputs):

    v_i     <- clamp(v_i, -40 / beta, 40 / beta)                  so |beta v| <= 40 and exp(beta v - M) >= e^-80
    M       = max_i beta v_i                                      the shift, without gradient
    values  = [v_i, exp(beta v_i - M)]                            every exponential <= 1

The output, per token t, head h and value channel j, with the prior's read of these values (the mean mu and
R = sum_i p_t(i) exp(beta_j v_i,j - M_j)), the shift M, the inverse temperature beta and the gate logits [a, b] of
the token, in fp32 (fp64 for fp64 inputs):

    F       = (log(max(R, tiny) + 1e-30 e^-M) + M) / beta        the free energy, restored (log-add-exp form)
    lambda  = sigmoid(a)                                          the inner gate
    g       = softplus(b) + 1e-6,  g <- sqrt(d_v) g / ||g||       the outer gate, RMS-normalised per head
    out     = g * ((1 - lambda) mu + lambda F)

M enters as a constant: F does not depend on it (up to the 1e-30 floor), and the mixer detaches it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

VALUE_LOGEXP_CAP = 40.0  # |beta v| <= 40 keeps exp(beta v - M) >= e^-80, inside fp32's normal range
LOG_RESTORE_EPS = 1e-30  # floor of R in the log-restore (far below the e^-40 clipping bound of the values)
GATE_FLOOR = 1e-6  # added to the outer gate's softplus


def check_value_inputs(v: torch.Tensor, beta: torch.Tensor) -> None:
    """The contract of the values op, shared by the reference and the kernels."""
    if v.dim() != 4 or tuple(beta.shape) != tuple(v.shape[2:]):
        raise ValueError(f"free_energy_values: v must be (B, N, H, Dv) and beta (H, Dv), got {tuple(v.shape)} and "
                         f"{tuple(beta.shape)}")


def free_energy_values_reference(v: torch.Tensor, beta: torch.Tensor,
                                 dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The values FEM's prior reads, (B, N, H, 2 Dv) in ``dtype`` (default fp32, fp64 for fp64 inputs), and the
    shift M, (B, 1, H, Dv) in fp32 (fp64), from the value projections v (B, N, H, Dv) and the inverse temperatures
    beta (H, Dv); computed in fp32 (fp64) whatever ``dtype``."""
    check_value_inputs(v, beta)
    acc = torch.promote_types(v.dtype, torch.float32)
    beta = beta.to(acc)
    cap = VALUE_LOGEXP_CAP / beta
    v = torch.clamp(v.to(acc), min=-cap, max=cap)
    scaled = beta * v
    shift = scaled.amax(dim=1, keepdim=True).detach()
    values = torch.cat([v, torch.exp(scaled - shift)], dim=-1)
    return (values if dtype is None else values.to(dtype)), shift


def check_inputs(read: torch.Tensor, shift: torch.Tensor, beta: torch.Tensor, gate_logits: torch.Tensor) -> None:
    """The contract shared by the reference and the kernels."""
    if read.dim() != 4 or read.shape[-1] % 2:
        raise ValueError(f"free_energy_mix: read must be (B, N, H, 2 Dv), got {tuple(read.shape)}")
    b, n, h, double_dv = read.shape
    dv = double_dv // 2
    expected = {"shift": ((b, 1, h, dv), shift), "beta": ((h, dv), beta),
                "gate_logits": ((b, n, 2 * h * dv), gate_logits)}
    for name, (shape, tensor) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"free_energy_mix: {name} must be {shape} for read of shape {tuple(read.shape)}, got "
                             f"{tuple(tensor.shape)}")
    if shift.requires_grad:
        raise ValueError("free_energy_mix: shift must not require a gradient (detach it: F does not depend on it)")


def free_energy_reads(read: torch.Tensor, shift: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and the free energy F, each (B, N, H, Dv) in fp32 (fp64 for fp64 inputs), from the prior's read
    (B, N, H, 2 Dv), the shift (B, 1, H, Dv) and beta (H, Dv)."""
    acc = torch.promote_types(read.dtype, torch.float32)
    mean, exp_read = read.to(acc).chunk(2, dim=-1)
    shift = shift.to(acc)
    # The clamp keeps log() finite (and its gradient zero) when a linear prior puts no mass on any token.
    log_read = torch.log(exp_read.clamp_min(torch.finfo(acc).tiny))
    free_energy = (torch.logaddexp(log_read, math.log(LOG_RESTORE_EPS) - shift) + shift) / beta.to(acc)
    return mean, free_energy


def free_energy_mix_reference(
        read: torch.Tensor, shift: torch.Tensor, beta: torch.Tensor, gate_logits: torch.Tensor,
) -> torch.Tensor:
    """FEM's gated output (B, N, H Dv) in ``gate_logits``' dtype.

    Args:
        read: the prior's read of [v, exp(beta v - M)], (B, N, H, 2 Dv).
        shift: M, (B, 1, H, Dv), without gradient.
        beta: the inverse temperatures, (H, Dv).
        gate_logits: the inner then the outer gate logits of each token, (B, N, 2 H Dv), each half head-major.
    """
    check_inputs(read, shift, beta, gate_logits)
    mean, free_energy = free_energy_reads(read, shift, beta)
    batch, num_tokens, heads, dv = mean.shape
    inner, outer = gate_logits.to(mean.dtype).view(batch, num_tokens, 2, heads, dv).unbind(2)
    inner = torch.sigmoid(inner)
    outer = F.softplus(outer) + GATE_FLOOR
    outer = outer / outer.norm(dim=-1, keepdim=True) * math.sqrt(dv)
    out = outer * torch.lerp(mean, free_energy, inner)
    return out.reshape(batch, num_tokens, heads * dv).to(gate_logits.dtype)
