"""The entry point of x + GELU(v * scale + shift): the kernel's host launch and the dispatching
:func:`affine_gelu_add`.

The kernel computes no gradient: where one is recorded (or under ``torch.compile``, which fuses the reference's
elementwise ops itself) the reference runs.
"""
from __future__ import annotations

import torch

from ..utils import KERNEL_DTYPES, cdiv, kernel_backend, launcher, triton_available
from . import heuristics
from .reference import affine_gelu_add_reference, check_inputs

if triton_available():
    from .kernels import _affine_gelu_add_kernel

    def _affine_gelu_add(x: torch.Tensor, v: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                         direct_launch: bool = False) -> torch.Tensor:
        """x + GELU(v * scale + shift) for (rows, C) views of x and v (unit channel stride, any row stride)."""
        rows, channels = x.shape
        out = torch.empty((rows, channels), dtype=x.dtype, device=x.device)
        block_r, block_c = heuristics.block_rows(channels), heuristics.block_c(channels)
        launcher(_affine_gelu_add_kernel, direct_launch)[(cdiv(rows, block_r), cdiv(channels, block_c))](
            x, v, scale, shift, out, rows, channels, x.stride(0), v.stride(0), out.stride(0),
            BLOCK_R=block_r, BLOCK_C=block_c, num_warps=heuristics.NUM_WARPS,
        )
        return out


def _as_rows(t: torch.Tensor) -> torch.Tensor | None:
    """``t`` as a (rows, C) view with unit channel stride, or None where its strides allow no such view."""
    try:
        rows = t.view(-1, t.shape[-1])
    except RuntimeError:  # the leading dims do not merge into one row stride
        return None
    return rows if rows.stride(-1) == 1 else None


def affine_gelu_add(x: torch.Tensor, v: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``x + GELU(v * scale + shift)`` in x's dtype, the exact (erf) GELU computed in fp32.

    Args:
        x: (..., C), added to the shortcut (e.g. an attention output).
        v: (..., C), x's shape; the kernel reads strides whose leading dims merge into rows with a unit channel
            stride (a slice of a fused projection does), the reference any others.
        scale: (C,) per-channel factor.
        shift: (C,) per-channel offset.

    The Triton kernel runs for CUDA tensors in a kernel dtype when no gradient is recorded; otherwise the reference.
    """
    check_inputs(x, v, scale, shift)
    tensors = (x, v, scale, shift)
    recording = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if kernel_backend(x.device) == "triton" and not recording and not torch.compiler.is_compiling() \
            and x.numel() > 0 and all(t.dtype in KERNEL_DTYPES for t in tensors):
        rows_x, rows_v = _as_rows(x), _as_rows(v)
        if rows_x is not None and rows_v is not None:
            return _affine_gelu_add(rows_x, rows_v, scale, shift, direct_launch=True).view(x.shape)
    return affine_gelu_add_reference(x, v, scale, shift)
