"""The SSM kernels' entry points: the host launches of the kernels, the autograd functions and the dispatching
:func:`ssm_kernels` and :func:`ssm_toeplitz_lags` (no custom op: inside ``torch.compile`` the ops trace their PyTorch
references, which Inductor fuses itself, as ZeroS's weightings do).

The kernels replace the reference's ~65 small launches forward and ~145 backward per H3 block (every training step
recomputes the kernels from the parameters) with one launch each way; :func:`ssm_toeplitz_lags` also writes the
Toeplitz lag vector in place (the flip, the lag-zero sum with the skip and the concatenation, and their backward's
slices, flip and sums, a dozen launches more per block).
"""
from __future__ import annotations

import torch

from ..launch import cached_launcher
from ..utils import KERNEL_DTYPES, cdiv, kernel_backend, triton_available
from . import heuristics
from .reference import check_inputs, check_lags_inputs, ssm_kernels_reference, ssm_toeplitz_lags_reference

if triton_available():
    from .kernels import _ssm_kernels_bwd_kernel, _ssm_kernels_fwd_kernel, _ssm_lags_fwd_kernel

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
            return (*_ssm_kernels_bwd(params, grad.contiguous(), grad.shape[-1], lags=False), None)

    def _ssm_kernels_bwd(params: tuple[torch.Tensor, ...], grad: torch.Tensor, length: int,
                         lags: bool) -> tuple[torch.Tensor, ...]:
        """The parameters' gradients from the kernels' (``lags``: from the Toeplitz lag vector's, (H, 2L - 1), the
        parameters' rows being (direction, head))."""
        rows, modes = params[1].shape
        grads = [torch.empty(tuple(p.shape), dtype=torch.float32, device=p.device) for p in params]
        cached_launcher(_ssm_kernels_bwd_kernel)[(rows,)](*params, grad, *grads, modes, length, rows // 2,
                                                          LAGS=lags, **_meta(modes))
        return tuple(g.to(p.dtype) for g, p in zip(grads, params, strict=True))

    def _ssm_lags_fwd(params: tuple[torch.Tensor, ...], skip: torch.Tensor | None, heads: int, modes: int,
                      length: int) -> torch.Tensor:
        """The (heads, 2 length - 1) lag vector from the parameters' (direction, head) rows and the skip."""
        out = torch.empty((heads, 2 * length - 1), dtype=torch.float32, device=params[0].device)
        grid = (heads, cdiv(length, heuristics.BLOCK_L))
        cached_launcher(_ssm_lags_fwd_kernel)[grid](*params, skip if skip is not None else out, out, modes, length,
                                                    heads, HAS_SKIP=skip is not None, **_meta(modes))
        return out

    class _SSMLagsFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, log_dt, log_a_real, a_imag, b, c, skip, length):
            params = (log_dt, log_a_real, a_imag, b, c)
            ctx.save_for_backward(*params)
            ctx.skip_dtype = None if skip is None else skip.dtype
            return _ssm_lags_fwd(params, skip, log_dt.shape[0] // 2, log_a_real.shape[1], length)

        @staticmethod
        def backward(ctx, grad):
            grad = grad.contiguous()
            length = (grad.shape[-1] + 1) // 2
            grads = _ssm_kernels_bwd(ctx.saved_tensors, grad, length, lags=True)
            # the skip adds to lag zero alone
            dskip = None if ctx.skip_dtype is None else grad[:, length - 1].to(ctx.skip_dtype)
            return (*grads, dskip, None)


def _parameter_rows(params: tuple[torch.Tensor, ...], modes: int) -> tuple[torch.Tensor, ...]:
    """(log_dt, log_a_real, a_imag, b, c) with their leading dims flattened into one row dim, contiguous, as the
    kernels read them."""
    log_dt, log_a_real, a_imag, b, c = params
    return (log_dt.reshape(-1).contiguous(), log_a_real.reshape(-1, modes).contiguous(),
            a_imag.reshape(-1, modes).contiguous(), b.reshape(-1, modes, 2).contiguous(),
            c.reshape(-1, modes, 2).contiguous())


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
    rows = _parameter_rows(params, modes)
    if not (torch.is_grad_enabled() and any(p.requires_grad for p in params)):
        out = _ssm_kernels_fwd(rows, rows[1].shape[0], modes, int(length))
    else:
        out = _SSMKernelsFunction.apply(*rows, int(length))
    return out.view(*lead, int(length))


def ssm_toeplitz_lags(log_dt: torch.Tensor, log_a_real: torch.Tensor, a_imag: torch.Tensor, b: torch.Tensor,
                      c: torch.Tensor, skip: torch.Tensor | None, length: int) -> torch.Tensor:
    """The Toeplitz lag vector (..., 2L - 1) of a pair of S4D-Lin kernels and a skip, in fp32 (fp64 for fp64 inputs):
    [Kf(L-1), ..., Kf(1), Kf(0) + Kb(0) (+ skip), Kb(1), ..., Kb(L-1)] (``reference.py``), the layout
    :func:`vitzoo.ops.toeplitz_attention` reads.

    Args:
        log_dt, log_a_real, a_imag, b, c: as :func:`ssm_kernels`'s, with a first dim of 2: the forward direction's
            kernel (Kf), then the flipped direction's (Kb).
        skip: an optional weight (...,) added to lag zero.
        length: L, the lags per direction.

    Eager fp16 / bf16 / fp32 inputs on CUDA run the kernels (one launch forward, one backward); float64, the CPU and
    ``torch.compile`` run the reference.
    """
    check_lags_inputs(log_dt, log_a_real, a_imag, b, c, skip, length)
    params = (log_dt, log_a_real, a_imag, b, c)
    tensors = params if skip is None else (*params, skip)
    if kernel_backend(log_dt.device) != "triton" or torch.compiler.is_compiling() \
            or any(t.dtype not in KERNEL_DTYPES for t in tensors):
        return ssm_toeplitz_lags_reference(*params, skip, length)
    lead, modes = tuple(log_a_real.shape[1:-1]), log_a_real.shape[-1]
    rows = _parameter_rows(params, modes)
    skip_rows = None if skip is None else skip.reshape(-1).contiguous()
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
        out = _ssm_lags_fwd(rows, skip_rows, rows[0].shape[0] // 2, modes, int(length))
    else:
        out = _SSMLagsFunction.apply(*rows, skip_rows, int(length))
    return out.view(*lead, 2 * int(length) - 1)
