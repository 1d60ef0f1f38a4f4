"""The entry point of x + GELU(BatchNorm(v)) in eval mode: the kernel's host launch and the dispatching
:func:`batch_norm_gelu_add`.

The kernel computes no gradient: where one is recorded (or under ``torch.compile``, which fuses the reference's
elementwise ops itself) the reference runs.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..launch import KeptLaunches, bind_launch, eager_inference, inference_key
from ..utils import KERNEL_DTYPES, cdiv, kernel_backend, triton_available
from . import heuristics
from .reference import batch_norm_gelu_add_reference, check_inputs

if triton_available():
    from .kernels import _batch_norm_gelu_add_kernel

    def _batch_norm_gelu_add(
            x: torch.Tensor, v: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
            weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float, head_dim: int,
    ) -> tuple[torch.Tensor, Callable[..., torch.Tensor]]:
        """x + GELU(BatchNorm(v)) for (rows, H, D) views of x and v (unit channel stride, any row and head strides),
        contiguous, and ``repeat(x, v, running_mean, running_var, weight, bias)``, which computes it for other views
        of the same :func:`_inference_key` with a bound launch."""
        rows, heads, _ = x.shape
        channels = heads * head_dim
        shape, dtype, device = (rows, heads, head_dim), x.dtype, x.device
        out = torch.empty(shape, dtype=dtype, device=device)
        block_r, block_c = heuristics.block_rows(channels), heuristics.block_c(channels)
        sizes = (rows, channels, head_dim, float(eps), x.stride(0), x.stride(1), v.stride(0), v.stride(1),
                 out.stride(0), out.stride(1))
        keywords = dict(HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, BLOCK_R=block_r, BLOCK_C=block_c,
                        num_warps=heuristics.NUM_WARPS)

        def pointers(x, v, running_mean, running_var, weight, bias, out):
            return (x, v, running_mean, running_var, weight if weight is not None else running_mean,
                    bias if bias is not None else running_mean, out)

        bound = bind_launch(_batch_norm_gelu_add_kernel, (cdiv(rows, block_r), cdiv(channels, block_c)),
                            (*pointers(x, v, running_mean, running_var, weight, bias, out), *sizes), keywords)

        def repeat(x, v, running_mean, running_var, weight, bias):
            out = torch.empty(shape, dtype=dtype, device=device)
            bound(*pointers(x, v, running_mean, running_var, weight, bias, out), *sizes)
            return out

        return out, repeat


def _as_rows(t: torch.Tensor) -> torch.Tensor | None:
    """``t`` (..., H, D) as a (rows, H, D) view with unit channel stride, or None where its strides allow none."""
    try:
        rows = t.view(-1, t.shape[-2], t.shape[-1])
    except RuntimeError:  # the dims do not merge into one row stride
        return None
    return rows if rows.stride(-1) == 1 else None


# The launches kept for eager calls with nothing to differentiate (every tensor's tensor_key and eps).
_KEPT = KeptLaunches()


def _inference_key(x, v, running_mean, running_var, weight, bias, eps) -> tuple | None:
    """The key of an eager call with nothing to differentiate (:func:`~vitzoo.ops.launch.inference_key` of the
    tensors and eps); None for other calls, which are checked every time."""
    if eps.__class__ is not float:
        return None
    return inference_key(x, v, running_mean, running_var, weight, bias, options=(eps,))


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
    key = _inference_key(x, v, running_mean, running_var, weight, bias, eps)
    kept = _KEPT.get(key)
    if kept is not None:
        return kept(x, v, running_mean, running_var, weight, bias)
    check_inputs(x, v, running_mean, running_var, weight, bias)
    tensors = tuple(t for t in (x, v, running_mean, running_var, weight, bias) if t is not None)
    if kernel_backend(x.device) == "triton" and eager_inference(*tensors) and x.numel() > 0 \
            and all(t.dtype in KERNEL_DTYPES for t in tensors):
        rows_x, rows_v = _as_rows(x), _as_rows(v)
        if rows_x is not None and rows_v is not None:
            out, repeat = _batch_norm_gelu_add(rows_x, rows_v, running_mean, running_var, weight, bias, eps,
                                               x.shape[-1])
            rows_shape, shape = rows_x.shape, x.shape
            _KEPT.keep(key, lambda x, v, *params: repeat(x.view(rows_shape), v.view(rows_shape), *params).view(shape))
            return out.view(shape)
    return batch_norm_gelu_add_reference(x, v, running_mean, running_var, weight, bias, eps)
