"""The SSM kernels' entry points: the host launches of the kernels, the autograd function and the dispatching
:func:`ssm_kernels` (no custom op: inside ``torch.compile`` the op traces its PyTorch reference, which Inductor fuses
itself, as ZeroS's weightings do).

The kernels replace the reference's ~65 small launches forward and ~145 backward per H3 block (every training step
recomputes the kernels from the parameters) with one launch each way.
"""
from __future__ import annotations

import torch

from ..launch import cached_launcher
from ..utils import KERNEL_DTYPES, kernel_backend, triton_available
from . import heuristics
from .reference import check_inputs, ssm_kernels_reference

if triton_available():
    from .kernels import _ssm_kernels_bwd_kernel, _ssm_kernels_fwd_kernel

    def _meta(modes: int) -> dict:
        return dict(BLOCK_M=heuristics.block_m(modes), BLOCK_L=heuristics.BLOCK_L, num_warps=heuristics.NUM_WARPS)

    def _ssm_kernels_fwd(params: tuple[torch.Tensor, ...], rows: int, modes: int, length: int) -> torch.Tensor:
        out = torch.empty((rows, length), dtype=torch.float32, device=params[0].device)
        cached_launcher(_ssm_kernels_fwd_kernel)[(rows,)](*params, out, modes, length, **_meta(modes))
        return out

    class _SSMKernelsFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, log_dt, log_a_real, a_imag, b, c, length):
            rows, modes = log_a_real.shape
            ctx.save_for_backward(log_dt, log_a_real, a_imag, b, c)
            return _ssm_kernels_fwd((log_dt, log_a_real, a_imag, b, c), rows, modes, length)

        @staticmethod
        def backward(ctx, grad):
            params = ctx.saved_tensors
            rows, modes = params[1].shape
            grads = [torch.empty(tuple(p.shape), dtype=torch.float32, device=p.device) for p in params]
            cached_launcher(_ssm_kernels_bwd_kernel)[(rows,)](*params, grad.contiguous(), *grads, modes, grad.shape[-1],
                                                              **_meta(modes))
            return (*(g.to(p.dtype) for g, p in zip(grads, params, strict=True)), None)


def ssm_kernels(log_dt: torch.Tensor, log_a_real: torch.Tensor, a_imag: torch.Tensor, b: torch.Tensor,
                c: torch.Tensor, length: int) -> torch.Tensor:
    """The S4D-Lin convolution kernels (..., L) in fp32 (fp64 for fp64 inputs); ``reference.py`` states the math.

    Args:
        log_dt: log of the step size, (...,).
        log_a_real: log of minus the real part of A, (..., M).
        a_imag: the imaginary part of A, (..., M).
        b, c: B and C as (real, imaginary) pairs, (..., M, 2).
        length: L, the number of lags.

    Eager fp16 / bf16 / fp32 parameters on CUDA run the kernels; float64, the CPU and ``torch.compile`` run the
    reference.
    """
    check_inputs(log_dt, log_a_real, a_imag, b, c, length)
    params = (log_dt, log_a_real, a_imag, b, c)
    if kernel_backend(log_dt.device) != "triton" or torch.compiler.is_compiling() \
            or any(p.dtype not in KERNEL_DTYPES for p in params):
        return ssm_kernels_reference(*params, length)
    lead, modes = tuple(log_a_real.shape[:-1]), log_a_real.shape[-1]
    rows = (log_dt.reshape(-1).contiguous(), log_a_real.reshape(-1, modes).contiguous(),
            a_imag.reshape(-1, modes).contiguous(), b.reshape(-1, modes, 2).contiguous(),
            c.reshape(-1, modes, 2).contiguous())
    if not (torch.is_grad_enabled() and any(p.requires_grad for p in params)):
        out = _ssm_kernels_fwd(rows, rows[1].shape[0], modes, int(length))
    else:
        out = _SSMKernelsFunction.apply(*rows, int(length))
    return out.view(*lead, int(length))
