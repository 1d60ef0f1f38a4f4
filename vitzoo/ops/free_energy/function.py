"""FEM's output entry points: the host launches of the kernels, the autograd function and the dispatching
:func:`free_energy_mix` (no custom op: inside ``torch.compile`` the op traces its PyTorch reference, which Inductor
fuses itself, as ZeroS's weightings do).

The kernels replace about fifteen elementwise launches of the mixer's PyTorch form (fp32 copies of the gate logits
included) with one launch forward and one backward, for eager callers.
"""
from __future__ import annotations

import math

import torch

from ..utils import KERNEL_DTYPES, kernel_backend, triton_available
from . import heuristics
from .reference import GATE_FLOOR, LOG_RESTORE_EPS, check_inputs, free_energy_mix_reference

if triton_available():
    import triton

    from .kernels import _free_energy_mix_bwd_kernel, _free_energy_mix_fwd_kernel

    def _launch_args(read: torch.Tensor, gate_logits: torch.Tensor) -> tuple[tuple, tuple, dict]:
        batch, num_tokens, heads, double_dv = read.shape
        dv = double_dv // 2
        tokens = batch * num_tokens
        grid = (triton.cdiv(tokens, heuristics.BLOCK_T), heads)
        sizes = (tokens, num_tokens, heads, dv, heads * dv, read.stride(0), read.stride(1), read.stride(2),
                 gate_logits.stride(0), gate_logits.stride(1), math.log(LOG_RESTORE_EPS), GATE_FLOOR,
                 torch.finfo(torch.float32).tiny, math.sqrt(dv))
        meta = dict(BLOCK_T=heuristics.BLOCK_T, BLOCK_D=heuristics.block_d(dv), num_warps=heuristics.NUM_WARPS)
        return grid, sizes, meta

    def _free_energy_mix_fwd(read, shift, beta, gate_logits) -> torch.Tensor:
        batch, num_tokens, heads, double_dv = read.shape
        out = torch.empty((batch, num_tokens, heads * double_dv // 2), dtype=gate_logits.dtype, device=read.device)
        grid, sizes, meta = _launch_args(read, gate_logits)
        _free_energy_mix_fwd_kernel[grid](read, shift, beta, gate_logits, out, *sizes, **meta)
        return out

    def _free_energy_mix_bwd(grad, read, shift, beta, gate_logits) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(d read (B, N, H, 2 Dv), d gate_logits (B, N, 2 H Dv), d beta (H, Dv) in fp32)."""
        grid, sizes, meta = _launch_args(read, gate_logits)
        d_read = torch.empty(tuple(read.shape), dtype=read.dtype, device=read.device)
        d_gate_logits = torch.empty(tuple(gate_logits.shape), dtype=gate_logits.dtype, device=read.device)
        d_beta = torch.empty((grid[0], *beta.shape), dtype=torch.float32, device=read.device)
        _free_energy_mix_bwd_kernel[grid](read, shift, beta, gate_logits, grad, d_read, d_gate_logits, d_beta,
                                          *sizes, **meta)
        return d_read, d_gate_logits, d_beta.sum(dim=0)

    class _FreeEnergyMixFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, read, shift, beta, gate_logits):
            ctx.save_for_backward(read, shift, beta, gate_logits)
            return _free_energy_mix_fwd(read, shift, beta, gate_logits)

        @staticmethod
        def backward(ctx, grad):
            read, shift, beta, gate_logits = ctx.saved_tensors
            d_read, d_gate_logits, d_beta = _free_energy_mix_bwd(grad.contiguous(), read, shift, beta, gate_logits)
            return d_read, None, d_beta.to(beta.dtype), d_gate_logits


def free_energy_mix(
        read: torch.Tensor, shift: torch.Tensor, beta: torch.Tensor, gate_logits: torch.Tensor,
) -> torch.Tensor:
    """FEM's gated output (B, N, H Dv) in ``gate_logits``' dtype; ``reference.py`` states the math.

    Args:
        read: the prior's read of [v, exp(beta v - M)], (B, N, H, 2 Dv), any strides.
        shift: M, (B, 1, H, Dv), without gradient.
        beta: the inverse temperatures, (H, Dv).
        gate_logits: the inner then the outer gate logits of each token, (B, N, 2 H Dv), any strides.

    Eager fp16 / bf16 / fp32 inputs on CUDA run the kernels; float64, the CPU and ``torch.compile`` run the reference.
    """
    check_inputs(read, shift, beta, gate_logits)
    tensors = (read, shift, beta, gate_logits)
    if kernel_backend(read.device) != "triton" or torch.compiler.is_compiling() or read.numel() == 0 \
            or any(t.dtype not in KERNEL_DTYPES for t in tensors):
        return free_energy_mix_reference(read, shift, beta, gate_logits)
    # the kernels take a unit stride along the channels; shift and beta are small, read as contiguous
    read, gate_logits = (t if t.stride(-1) == 1 else t.contiguous() for t in (read, gate_logits))
    shift, beta = shift.contiguous(), beta.contiguous()
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
        # nothing to differentiate: launch directly, without the autograd function's bookkeeping (host time)
        return _free_energy_mix_fwd(read, shift, beta, gate_logits)
    return _FreeEnergyMixFunction.apply(read, shift, beta, gate_logits)
