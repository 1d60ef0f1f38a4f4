"""Toeplitz attention's entry points: the host launches of the kernels, the autograd function and the dispatching
:func:`toeplitz_attention` (no custom op: inside ``torch.compile`` the op traces its PyTorch reference, as the SSM
kernels do).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

from ..launch import KeptLaunches, bind_launch, cached_launcher, inference_key
from ..utils import KERNEL_DTYPES, MAX_HEAD_DIM, cast_to, cdiv, interpreting, kernel_backend, triton_available
from . import heuristics
from .reference import check_inputs, toeplitz_attention_reference

if triton_available():
    from .kernels import (
        _toeplitz_attention_dkdv_kernel,
        _toeplitz_attention_dlags_kernel,
        _toeplitz_attention_fwd_kernel,
    )

    def _meta(q: torch.Tensor, v: torch.Tensor, forward: bool = False) -> dict:
        """The launch keywords of the forward kernel (``forward``) or of the gradient kernels."""
        dk, dv = q.shape[-1], v.shape[-1]
        if forward:
            tiles = dict(BLOCK_T=heuristics.FWD_BLOCK_T, BLOCK_S=heuristics.FWD_BLOCK_S,
                         num_warps=heuristics.FWD_NUM_WARPS, num_stages=heuristics.FWD_NUM_STAGES)
        else:
            tiles = dict(BLOCK_T=heuristics.BLOCK_T, BLOCK_S=heuristics.BLOCK_S, num_warps=heuristics.NUM_WARPS,
                         num_stages=heuristics.NUM_STAGES)
        return dict(DK=dk, DV=dv, BLOCK_DK=heuristics.block_d(dk), BLOCK_DV=heuristics.block_d(dv),
                    PREC="ieee" if interpreting() or q.dtype == torch.float32 else "native", **tiles)

    def _strides(t: torch.Tensor) -> tuple[int, int, int]:
        return t.stride(0), t.stride(1), t.stride(2)

    def _fwd_launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lags: torch.Tensor
                    ) -> tuple[torch.Tensor, tuple[int, int], tuple, dict]:
        """The forward's output buffer and its launch: (out, grid, arguments, keywords)."""
        batch, length, heads, _ = q.shape
        out = torch.empty((batch, length, heads, v.shape[-1]), dtype=q.dtype, device=q.device)
        args = (q, k, v, lags, out, length, heads, *_strides(q), *_strides(k), *_strides(v), *_strides(out))
        return out, (batch * heads, cdiv(length, heuristics.FWD_BLOCK_T)), args, _meta(q, v, forward=True)

    def _toeplitz_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lags: torch.Tensor
                                ) -> torch.Tensor:
        out, grid, args, keywords = _fwd_launch(q, k, v, lags)
        cached_launcher(_toeplitz_attention_fwd_kernel)[grid](*args, **keywords)
        return out

    def _bound_inference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lags: torch.Tensor
                         ) -> tuple[torch.Tensor, Callable[..., torch.Tensor]]:
        """The output of an eager call, and ``repeat(q, k, v, lags)``, which computes it for other inputs of the same
        key with a bound launch."""
        out, grid, args, keywords = _fwd_launch(q, k, v, lags)
        bound = bind_launch(_toeplitz_attention_fwd_kernel, grid, args, keywords)
        sizes = args[5:]  # the length, heads and strides after the tensors
        out_shape = out.shape

        def repeat(q, k, v, lags):
            out = torch.empty(out_shape, dtype=q.dtype, device=q.device)
            bound(q, k, v, lags, out, *sizes)
            return out

        return out, repeat

    class _ToeplitzAttentionFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, lags):
            ctx.save_for_backward(q, k, v, lags)
            return _toeplitz_attention_fwd(q, k, v, lags)

        @staticmethod
        def backward(ctx, grad):
            # lags come in fp32 (the entry point casts them), so their gradient is fp32 too
            q, k, v, lags = ctx.saved_tensors
            if grad.stride(-1) != 1:
                grad = grad.contiguous()
            batch, length, heads, _ = q.shape
            meta = _meta(q, v)
            dq = dk = dv = dlags = None
            if ctx.needs_input_grad[0]:
                # dq_t = sum_s T[t, s] (do_t . v_s) k_s: the forward on (do, v, k)
                dq = _toeplitz_attention_fwd(grad, v, k, lags)
            if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
                dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
                dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
                cached_launcher(_toeplitz_attention_dkdv_kernel)[(batch * heads, cdiv(length, heuristics.BLOCK_S))](
                    q, k, v, grad, lags, dk, dv, length, heads, *_strides(q), *_strides(k), *_strides(v),
                    *_strides(grad), *_strides(dk), *_strides(dv), **meta,
                )
            if ctx.needs_input_grad[3]:
                dlags = torch.zeros(lags.shape, dtype=torch.float32, device=lags.device)
                tiles = (cdiv(length, heuristics.BLOCK_T), cdiv(length, heuristics.BLOCK_S))
                splits = heuristics.dlags_splits(batch, heads * tiles[0] * tiles[1], q.device)
                cached_launcher(_toeplitz_attention_dlags_kernel)[(heads * splits, *tiles)](
                    q, k, v, grad, dlags, length, batch, splits, *_strides(q), *_strides(k), *_strides(v),
                    *_strides(grad), **meta,
                )
            return dq, dk, dv, dlags


def runs_kernels(device: torch.device, dtype: torch.dtype, head_dim_k: int, head_dim_v: int) -> bool:
    """Whether :func:`toeplitz_attention` runs its kernels for q, k, v of this device, one dtype and these head dims
    (else its PyTorch reference, which holds the (B, H, N, N) scores)."""
    return (kernel_backend(device) == "triton" and not torch.compiler.is_compiling() and dtype in KERNEL_DTYPES
            and head_dim_k == head_dim_v <= MAX_HEAD_DIM)


# The launches kept for eager calls with nothing to differentiate, by the inference_key of q, k, v and the lags.
_KEPT = KeptLaunches()


def toeplitz_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lags: torch.Tensor) -> torch.Tensor:
    """o_t = sum_s T[t, s] (q_t . k_s) v_s per batch and head, T[t, s] = lags[s - t + N - 1] (``reference.py``).

    Args:
        q, k: (B, N, H, D) queries and keys; any strides (views of a fused projection need no copy).
        v: (B, N, H, D) values.
        lags: (H, 2N - 1) Toeplitz weights by lag, lag 0 at index N - 1.

    Returns:
        (B, N, H, D) in the inputs' dtype.

    Eager CUDA calls with q, k, v in one of fp16 / bf16 / fp32 run the kernels, which keep the (N, N) scores on chip
    (fp32 accumulation, lags read in fp32). Elsewhere (CPU, float64, mixed dtypes, ``torch.compile``) the reference
    runs, with gradients under activation checkpointing, so that autograd keeps the O(B N H D) inputs rather than
    the (B, H, N, N) scores.
    """
    key = inference_key(q, k, v, lags)
    kept = _KEPT.get(key)
    if kept is not None:
        return kept(q, k, v, lags)
    check_inputs(q, k, v, lags)
    if not (q.dtype == k.dtype == v.dtype and runs_kernels(q.device, q.dtype, q.shape[-1], v.shape[-1])):
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, lags)):
            return checkpoint(toeplitz_attention_reference, q, k, v, lags, use_reentrant=False)
        return toeplitz_attention_reference(q, k, v, lags)
    if not (lags.dtype == torch.float32 and lags.is_contiguous() and all(t.stride(-1) == 1 for t in (q, k, v))):
        key = None  # the call's tensors are not the ones the kernel reads: nothing to keep
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        lags = cast_to(lags, torch.float32).contiguous()
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, lags)):
        return _ToeplitzAttentionFunction.apply(q, k, v, lags)
    if key is None:
        return _toeplitz_attention_fwd(q, k, v, lags)
    out, repeat = _bound_inference(q, k, v, lags)
    _KEPT.keep(key, repeat)
    return out
