"""The entry point of InLine's local-kernel predictor: the kernels' host launches and the dispatching
:func:`predict_local_kernels`.

The kernels compute no gradient: where one is recorded (or under ``torch.compile``) the reference runs.
"""
from __future__ import annotations

import torch

from ..launch import launcher
from ..utils import KERNEL_DTYPES, cdiv, kernel_backend, triton_available
from . import heuristics
from .reference import check_inputs, predict_local_kernels_reference

if triton_available():
    from .kernels import _predictor_mlp_kernel, _token_sum_kernel

    def _predict_local_kernels(
            x: torch.Tensor, weight1: torch.Tensor, bias1: torch.Tensor, weight2: torch.Tensor, bias2: torch.Tensor,
            groups: int, kernel_size: int, direct_launch: bool = False,
    ) -> torch.Tensor:
        """(B, C, k, k) channels-last kernels in the weights' dtype; x (B, N, C) with a unit channel stride."""
        b, n, c = x.shape
        splits = cdiv(n, heuristics.MEAN_SPAN)
        partial = torch.empty((b, splits, c), dtype=torch.float32, device=x.device)
        launcher(_token_sum_kernel, direct_launch)[(b, cdiv(c, heuristics.MEAN_BLOCK_C), splits)](
            x, partial, n, c, splits, x.stride(0), x.stride(1), SPAN=heuristics.MEAN_SPAN,
            BLOCK_N=heuristics.MEAN_BLOCK_N, BLOCK_C=heuristics.MEAN_BLOCK_C, num_warps=heuristics.NUM_WARPS,
        )
        taps = kernel_size * kernel_size
        out = torch.empty((b, kernel_size, kernel_size, c), dtype=weight1.dtype, device=x.device)
        width = c // groups
        launcher(_predictor_mlp_kernel, direct_launch)[(cdiv(b, heuristics.MLP_BLOCK_B), groups)](
            partial, weight1, bias1, weight2, bias2, out, b, c, width, taps, splits, 1.0 / n,
            BLOCK_B=heuristics.MLP_BLOCK_B, BLOCK_D=heuristics.block_width(width), BLOCK_J=heuristics.MLP_BLOCK_J,
            num_warps=heuristics.NUM_WARPS,
        )
        return out.permute(0, 3, 1, 2)


def predict_local_kernels(x: torch.Tensor, weight1: torch.Tensor, bias1: torch.Tensor, weight2: torch.Tensor,
                          bias2: torch.Tensor, groups: int, kernel_size: int) -> torch.Tensor:
    """InLine's per-image depthwise kernels from the token mean of ``x`` (see :mod:`.reference`).

    Args:
        x: (B, N, C) tokens; any strides with a unit channel stride for the kernels.
        weight1, bias1: the first grouped 1x1 layer, (C, C / G, 1) and (C,).
        weight2, bias2: the second, (C k^2, C / G, 1) and (C k^2,).
        groups: G.
        kernel_size: k.

    Returns:
        (B, C, k, k), a view of a (B, k, k, C) tensor, in the weights' dtype, under autocast too. The Triton kernels
        run for CUDA tensors in a kernel dtype with fp32 weights when no gradient is recorded; otherwise the
        reference, with autocast off.
    """
    check_inputs(x, weight1, bias1, weight2, bias2, groups, kernel_size)
    tensors = (x, weight1, bias1, weight2, bias2)
    recording = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if kernel_backend(x.device) == "triton" and not recording and not torch.compiler.is_compiling() \
            and x.numel() > 0 and x.stride(-1) == 1 and weight1.dtype == torch.float32 \
            and all(t.dtype in KERNEL_DTYPES for t in tensors) and all(t.is_contiguous() for t in tensors[1:]):
        return _predict_local_kernels(x, weight1, bias1, weight2, bias2, groups, kernel_size, direct_launch=True)
    # in the weights' dtype as the kernels compute it, whatever autocast is on (a (B, C) problem: nothing to cast)
    with torch.autocast(x.device.type, enabled=False):
        return predict_local_kernels_reference(x, weight1, bias1, weight2, bias2, groups, kernel_size)
