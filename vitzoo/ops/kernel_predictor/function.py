"""The entry point of InLine's local-kernel predictor: the kernels' host launches, the autograd function and the
dispatching :func:`predict_local_kernels`.

Eager calls run the kernels: two forward launches, and one backward launch (plus a sum over image blocks) where a
gradient is recorded, in place of the reference's small operations on a (B, C) problem (about 30 per training step,
each a launch and its host time). Under ``torch.compile`` the reference runs, for the compiler to fuse.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..launch import KeptLaunches, bind_launch, eager_inference, inference_key, launcher
from ..utils import KERNEL_DTYPES, cdiv, kernel_backend, triton_available
from . import heuristics
from .reference import check_inputs, predict_local_kernels_reference

if triton_available():
    from .kernels import _predictor_bwd_kernel, _predictor_mlp_kernel, _token_sum_kernel

    def _buffers(x: torch.Tensor, weight1: torch.Tensor, kernel_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(the fp32 partial token sums, the (B, k, k, C) kernels in the weights' dtype)."""
        b, n, c = x.shape
        partial = torch.empty((b, cdiv(n, heuristics.MEAN_SPAN), c), dtype=torch.float32, device=x.device)
        return partial, torch.empty((b, kernel_size, kernel_size, c), dtype=weight1.dtype, device=x.device)

    def _launches(
            x: torch.Tensor, weight1: torch.Tensor, bias1: torch.Tensor, weight2: torch.Tensor, bias2: torch.Tensor,
            groups: int, kernel_size: int, partial: torch.Tensor, out: torch.Tensor,
    ) -> tuple[tuple, tuple]:
        """The two launches, each (grid, arguments, keywords): the token sums of x (B, N, C) into ``partial``, then
        both layers into ``out``."""
        b, n, c = x.shape
        splits = partial.shape[1]
        width = c // groups
        sums = ((b, cdiv(c, heuristics.MEAN_BLOCK_C), splits), (x, partial, n, c, splits, x.stride(0), x.stride(1)),
                dict(SPAN=heuristics.MEAN_SPAN, BLOCK_N=heuristics.MEAN_BLOCK_N, BLOCK_C=heuristics.MEAN_BLOCK_C,
                     num_warps=heuristics.NUM_WARPS))
        mlp = ((cdiv(b, heuristics.MLP_BLOCK_B), groups),
               (partial, weight1, bias1, weight2, bias2, out, b, c, width, kernel_size * kernel_size, splits, 1.0 / n),
               dict(BLOCK_B=heuristics.MLP_BLOCK_B, BLOCK_D=heuristics.block_width(width),
                    BLOCK_J=heuristics.MLP_BLOCK_J, num_warps=heuristics.NUM_WARPS))
        return sums, mlp

    def _predict_local_kernels(
            x: torch.Tensor, weight1: torch.Tensor, bias1: torch.Tensor, weight2: torch.Tensor, bias2: torch.Tensor,
            groups: int, kernel_size: int,
    ) -> tuple[torch.Tensor, Callable[..., torch.Tensor]]:
        """(B, C, k, k) channels-last kernels in the weights' dtype from x (B, N, C) with a unit channel stride, and
        ``repeat(x, weight1, bias1, weight2, bias2)``, which computes them for other inputs of the same
        :func:`_inference_key` with bound launches."""
        partial, out = _buffers(x, weight1, kernel_size)
        (sums_grid, sums_args, sums_keywords), (mlp_grid, mlp_args, mlp_keywords) = _launches(
            x, weight1, bias1, weight2, bias2, groups, kernel_size, partial, out)
        sums = bind_launch(_token_sum_kernel, sums_grid, sums_args, sums_keywords)
        mlp = bind_launch(_predictor_mlp_kernel, mlp_grid, mlp_args, mlp_keywords)
        sums_sizes, mlp_sizes = sums_args[2:], mlp_args[6:]  # the arguments after the tensors

        def repeat(x, weight1, bias1, weight2, bias2):
            partial, out = _buffers(x, weight1, kernel_size)
            sums(x, partial, *sums_sizes)
            mlp(partial, weight1, bias1, weight2, bias2, out, *mlp_sizes)
            return out.permute(0, 3, 1, 2)

        return out.permute(0, 3, 1, 2), repeat

    def _predictor_fwd(
            x: torch.Tensor, weight1: torch.Tensor, bias1: torch.Tensor, weight2: torch.Tensor, bias2: torch.Tensor,
            groups: int, kernel_size: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the (B, C, k, k) channels-last kernels, the fp32 partial token sums the backward reads)."""
        partial, out = _buffers(x, weight1, kernel_size)
        for kernel, (grid, args, keywords) in zip((_token_sum_kernel, _predictor_mlp_kernel), _launches(
                x, weight1, bias1, weight2, bias2, groups, kernel_size, partial, out), strict=True):
            launcher(kernel, direct_launch=True)[grid](*args, **keywords)
        return out.permute(0, 3, 1, 2), partial

    def _predictor_bwd(
            grad: torch.Tensor, partial: torch.Tensor, weight1: torch.Tensor, bias1: torch.Tensor,
            weight2: torch.Tensor, groups: int, kernel_size: int, num_tokens: int, x_dtype: torch.dtype,
    ) -> tuple[torch.Tensor, ...]:
        """(the gradient of one token of x, (B, 1, C) in x's dtype (every token's is the same), then dW1, db1, dW2 and
        db2 in fp32) from the kernels' gradient ``grad`` (B, C, k, k), any strides."""
        b, splits, c = partial.shape
        width, taps = c // groups, kernel_size * kernel_size
        blocks = cdiv(b, heuristics.MLP_BLOCK_B)
        sizes = (c * width, c, c * taps * width, c * taps)
        dparams = torch.empty((blocks, sum(sizes)), dtype=torch.float32, device=partial.device)
        dx = torch.empty((b, 1, c), dtype=x_dtype, device=partial.device)
        launcher(_predictor_bwd_kernel, direct_launch=True)[(blocks, groups)](
            partial, weight1, bias1, weight2, grad, dx, dparams, b, c, width, kernel_size, splits, 1.0 / num_tokens,
            sum(sizes), *grad.stride(), BLOCK_B=heuristics.MLP_BLOCK_B, BLOCK_D=heuristics.block_width(width),
            BLOCK_J=heuristics.MLP_BLOCK_J, num_warps=heuristics.BWD_NUM_WARPS)
        dw1, db1, dw2, db2 = (dparams[0] if blocks == 1 else dparams.sum(dim=0)).split(sizes)
        return dx, dw1.view(c, width, 1), db1, dw2.view(c * taps, width, 1), db2

    class _PredictorFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight1, bias1, weight2, bias2, groups, kernel_size):
            out, partial = _predictor_fwd(x, weight1, bias1, weight2, bias2, groups, kernel_size)
            ctx.save_for_backward(partial, weight1, bias1, weight2)
            ctx.options = (groups, kernel_size, x.shape[1], x.dtype, bias2.dtype)
            return out

        @staticmethod
        def backward(ctx, grad):
            partial, weight1, bias1, weight2 = ctx.saved_tensors
            groups, kernel_size, num_tokens, x_dtype, bias2_dtype = ctx.options
            dx, dw1, db1, dw2, db2 = _predictor_bwd(grad, partial, weight1, bias1, weight2, groups, kernel_size,
                                               num_tokens, x_dtype)
            # every token's gradient is its image's: a broadcast view, which autograd adds to x's other gradients
            return (dx.expand(dx.shape[0], num_tokens, dx.shape[2]), dw1.to(weight1.dtype), db1.to(bias1.dtype),
                    dw2.to(weight2.dtype), db2.to(bias2_dtype), None, None)


# The launches kept for eager calls with nothing to differentiate (:func:`_inference_key`).
_KEPT = KeptLaunches()


def _inference_key(x, weight1, bias1, weight2, bias2, groups, kernel_size) -> tuple | None:
    """The key of an eager call with nothing to differentiate (:func:`~vitzoo.ops.launch.inference_key` of the
    tensors, groups and k); None for other calls, which are checked every time."""
    if groups.__class__ is not int or kernel_size.__class__ is not int:
        return None
    return inference_key(x, weight1, bias1, weight2, bias2, options=(groups, kernel_size))


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
        run for CUDA tensors in a kernel dtype with fp32 weights, eagerly (with a backward kernel where a gradient is
        recorded); otherwise, and under ``torch.compile``, the reference, with autocast off.
    """
    key = _inference_key(x, weight1, bias1, weight2, bias2, groups, kernel_size)
    kept = _KEPT.get(key)
    if kept is not None:
        return kept(x, weight1, bias1, weight2, bias2)
    check_inputs(x, weight1, bias1, weight2, bias2, groups, kernel_size)
    tensors = (x, weight1, bias1, weight2, bias2)
    if kernel_backend(x.device) == "triton" and not torch.compiler.is_compiling() and x.numel() > 0 \
            and x.stride(-1) == 1 and weight1.dtype == torch.float32 \
            and all(t.dtype in KERNEL_DTYPES for t in tensors) and all(t.is_contiguous() for t in tensors[1:]):
        if eager_inference(*tensors):
            out, repeat = _predict_local_kernels(x, weight1, bias1, weight2, bias2, groups, kernel_size)
            _KEPT.keep(key, repeat)
            return out
        return _PredictorFunction.apply(x, weight1, bias1, weight2, bias2, groups, kernel_size)
    # in the weights' dtype as the kernels compute it, whatever autocast is on (a (B, C) problem: nothing to cast)
    with torch.autocast(x.device.type, enabled=False):
        return predict_local_kernels_reference(x, weight1, bias1, weight2, bias2, groups, kernel_size)
