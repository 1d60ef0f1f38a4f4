"""The entry point of x + GELU(BatchNorm(v)) in eval mode: the kernel's host launch and the dispatching
:func:`batch_norm_gelu_add`.

The kernel computes no gradient: where one is recorded (or under ``torch.compile``, which fuses the reference's
elementwise ops itself) the reference runs.
"""
from __future__ import annotations

import torch

from ..launch import launcher
from ..utils import KERNEL_DTYPES, cdiv, kernel_backend, triton_available
from . import heuristics
from .reference import batch_norm_gelu_add_reference, check_inputs

if triton_available():
    from .kernels import _batch_norm_gelu_add_kernel

    def _batch_norm_gelu_add(
            x: torch.Tensor, v: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
            weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float, head_dim: int,
            direct_launch: bool = False,
    ) -> torch.Tensor:
        """x + GELU(BatchNorm(v)) for (rows, H, D) views of x and v (unit channel stride, any row and head strides);
        the output is contiguous."""
        rows, heads, _ = x.shape
        channels = heads * head_dim
        out = torch.empty((rows, heads, head_dim), dtype=x.dtype, device=x.device)
        block_r, block_c = heuristics.block_rows(channels), heuristics.block_c(channels)
        launcher(_batch_norm_gelu_add_kernel, direct_launch)[(cdiv(rows, block_r), cdiv(channels, block_c))](
            x, v, running_mean, running_var, weight if weight is not None else running_mean,
            bias if bias is not None else running_mean, out, rows, channels, head_dim, float(eps),
            x.stride(0), x.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
            HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, BLOCK_R=block_r, BLOCK_C=block_c,
            num_warps=heuristics.NUM_WARPS,
        )
        return out


def _as_rows(t: torch.Tensor) -> torch.Tensor | None:
    """``t`` (..., H, D) as a (rows, H, D) view with unit channel stride, or None where its strides allow none."""
    try:
        rows = t.view(-1, t.shape[-2], t.shape[-1])
    except RuntimeError:  # the dims do not merge into one row stride
        return None
    return rows if rows.stride(-1) == 1 else None


def batch_norm_gelu_add(
        x: torch.Tensor,
        v: torch.Tensor,
        running_mean: torch.Tensor,
        running_var: torch.Tensor,
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        eps: float = 1e-5,
) -> torch.Tensor:
    """``x + GELU(BatchNorm(v))`` in x's dtype with the norm's running statistics (eval mode), shared by the heads;
    the exact (erf) GELU, computed in fp32.

    Args:
        x: (..., H, D), added to the shortcut (e.g. an attention output).
        v: (..., H, D), x's shape; the kernel reads any strides with a unit channel stride whose leading dims merge
            into rows (slices of a fused projection do), the reference any others.
        running_mean, running_var: (D,) the norm's statistics.
        weight, bias: (D,) its affine parameters, or None.
        eps: added to the variance.

    The Triton kernel runs for CUDA tensors in a kernel dtype when no gradient is recorded; otherwise the reference.
    """
    check_inputs(x, v, running_mean, running_var, weight, bias)
    tensors = tuple(t for t in (x, v, running_mean, running_var, weight, bias) if t is not None)
    recording = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if kernel_backend(x.device) == "triton" and not recording and not torch.compiler.is_compiling() \
            and x.numel() > 0 and all(t.dtype in KERNEL_DTYPES for t in tensors):
        rows_x, rows_v = _as_rows(x), _as_rows(v)
        if rows_x is not None and rows_v is not None:
            return _batch_norm_gelu_add(rows_x, rows_v, running_mean, running_var, weight, bias, eps, x.shape[-1],
                                        direct_launch=True).view(x.shape)
    return batch_norm_gelu_add_reference(x, v, running_mean, running_var, weight, bias, eps)
