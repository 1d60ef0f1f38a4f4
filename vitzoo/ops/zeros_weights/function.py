"""ZeroS's weightings' entry points: the host launches of the kernels, the autograd function and the dispatching
:func:`zeros_weights` (no custom op: see below).

The kernels replace about thirty elementwise and reduction launches of the mixer's PyTorch form (fp32 copies of u
included) with one launch forward (three over chunks of tokens where the (batch, head) programs alone would leave
the GPU idle) and one backward, for eager callers. Inside ``torch.compile`` the op traces its
PyTorch reference, which Inductor fuses into a few kernels itself (ZeroS-T compiled with it runs without a graph
break): launched through ``wrap_triton`` on the H200, the kernel's float arguments arrived as float64 and Triton 3.6
rejected its fp32 loop-carried statistics.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..launch import KeptLaunches, bind_launch, cached_launcher, eager_inference, inference_key
from ..utils import KERNEL_DTYPES, kernel_backend, triton_available
from . import heuristics
from .reference import LOG_TAU_RANGE, check_inputs, zeros_weights_reference

if triton_available():
    from .kernels import _zeros_weights_bwd_kernel, _zeros_weights_fwd_kernel

    def _fwd_buffers(u: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(key weights, query weights, logits (B, H, N), per-(batch, head) (max logit, sum of exp), ubar (B, H, D)),
        everything fp32, to be written."""
        b, n, h, d = u.shape
        options = dict(dtype=torch.float32, device=u.device)
        return (torch.empty((b, n, h, 3), **options), torch.empty((b, n, h, 3), **options),
                torch.empty((b, h, n), **options), torch.empty((b, h, 2), **options), torch.empty((b, h, d), **options))

    def _fwd_launches(u: torch.Tensor, gates: torch.Tensor) -> tuple[torch.Tensor, tuple[tuple, ...], tuple]:
        """(the chunks' partial sums buffer, each forward launch's (grid, keywords), the arguments after the ten
        tensors): one launch, or three over chunks of tokens (:func:`.heuristics.forward_chunks`)."""
        b, n, h, d = u.shape
        chunks, chunk = heuristics.forward_chunks(b * h, n, u.device)
        sizes = (n, h, d, u.stride(0), u.stride(1), u.stride(2), *gates.stride(), 1.0 / math.sqrt(d), *LOG_TAU_RANGE,
                 chunk, chunks)
        keywords = dict(ZERO_ORDER=gates.shape[2] == 3, BLOCK_N=heuristics.BLOCK_N, BLOCK_D=heuristics.block_d(d),
                        num_warps=heuristics.NUM_WARPS)
        if chunks == 1:
            return u, (((b * h, 1), dict(STAGE=0, **keywords)),), sizes
        part = torch.empty((b * h, chunks, d + 3), dtype=torch.float32, device=u.device)
        return part, tuple(((b * h, chunks), dict(STAGE=stage, **keywords)) for stage in (1, 2, 3)), sizes

    def _zeros_weights_fwd(
            u: torch.Tensor, gates: torch.Tensor, mu: torch.Tensor, log_tau: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The buffers of :func:`_fwd_buffers`, written (the last three are what the backward reads)."""
        buffers = _fwd_buffers(u)
        part, launches, sizes = _fwd_launches(u, gates)
        for grid, keywords in launches:
            cached_launcher(_zeros_weights_fwd_kernel)[grid](u, gates, mu, log_tau, *buffers, part, *sizes, **keywords)
        return buffers

    def _bound_inference(
            u: torch.Tensor, gates: torch.Tensor, mu: torch.Tensor, log_tau: torch.Tensor,
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], Callable[..., tuple[torch.Tensor, torch.Tensor]]]:
        """(key weights, query weights) of an eager call, and ``repeat(u, gates, mu, log_tau)``, which computes them
        for other inputs of the same key with bound launches."""
        buffers = _fwd_buffers(u)
        part, launches, sizes = _fwd_launches(u, gates)
        split = part is not u
        bound = [bind_launch(_zeros_weights_fwd_kernel, grid, (u, gates, mu, log_tau, *buffers, part, *sizes),
                             keywords) for grid, keywords in launches]
        part_shape = tuple(part.shape)

        def repeat(u, gates, mu, log_tau):
            buffers = _fwd_buffers(u)
            part = torch.empty(part_shape, dtype=torch.float32, device=u.device) if split else u
            for launch in bound:
                launch(u, gates, mu, log_tau, *buffers, part, *sizes)
            return buffers[:2]

        return buffers[:2], repeat

    def _zeros_weights_bwd(
            d_key_weights: torch.Tensor, d_query_weights: torch.Tensor, u: torch.Tensor, gates: torch.Tensor,
            mu: torch.Tensor, log_tau: torch.Tensor, logits: torch.Tensor, stats: torch.Tensor, ubar: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(du, dgates, per-(batch, head) parts of dmu (B, H, D) and dlog_tau (B, H), fp32)."""
        b, n, h, d = u.shape
        du = torch.empty((b, n, h, d), dtype=u.dtype, device=u.device)
        dgates = torch.empty(tuple(gates.shape), dtype=gates.dtype, device=u.device)
        dmu = torch.empty((b, h, d), dtype=torch.float32, device=u.device)
        dlog_tau = torch.empty((b, h), dtype=torch.float32, device=u.device)
        cached_launcher(_zeros_weights_bwd_kernel)[(b * h,)](
            u, gates, mu, log_tau, logits, stats, ubar, d_key_weights, d_query_weights, du, dgates, dmu, dlog_tau,
            n, h, d, u.stride(0), u.stride(1), u.stride(2), *gates.stride(), du.stride(0), du.stride(1),
            du.stride(2), *dgates.stride(), 1.0 / math.sqrt(d), *LOG_TAU_RANGE,
            ZERO_ORDER=gates.shape[2] == 3, BLOCK_N=heuristics.BLOCK_N, BLOCK_D=heuristics.block_d(d),
            num_warps=heuristics.NUM_WARPS,
        )
        return du, dgates, dmu, dlog_tau

    class _ZeroSWeightsFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, u, gates, mu, log_tau):
            key_weights, query_weights, logits, stats, ubar = _zeros_weights_fwd(u, gates, mu, log_tau)
            ctx.save_for_backward(u, gates, mu, log_tau, logits, stats, ubar)
            return key_weights, query_weights

        @staticmethod
        def backward(ctx, d_key_weights, d_query_weights):
            u, gates, mu, log_tau, logits, stats, ubar = ctx.saved_tensors
            # the gradients of the weights come from the linear-attention op, fresh and contiguous; a caller that
            # uses one of the two outputs only passes None for the other
            shape = (*u.shape[:3], 3)
            d_key_weights = logits.new_zeros(shape) if d_key_weights is None else d_key_weights.contiguous()
            d_query_weights = logits.new_zeros(shape) if d_query_weights is None else d_query_weights.contiguous()
            du, dgates, dmu, dlog_tau = _zeros_weights_bwd(d_key_weights, d_query_weights, u, gates, mu, log_tau,
                                                           logits, stats, ubar)
            return du, dgates, dmu.sum(dim=0).to(mu.dtype), dlog_tau.sum(dim=0).to(log_tau.dtype)


# The launches kept for eager calls with nothing to differentiate, by the inference_key of the four tensors.
_KEPT = KeptLaunches()


def zeros_weights(u: torch.Tensor, gate_logits: torch.Tensor, mu: torch.Tensor,
                  log_tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ZeroS's (key weights, query weights) for :func:`vitzoo.ops.linear_attention`, each (B, N, H, 3) fp32.

    Args:
        u: radial-logit inputs (B, N, H, D), any strides with a unit last stride (a slice of the fused projection).
        gate_logits: (B, N, G, H): G = 2 (sigma1, sigmah) or 3 (and the zero-order gate).
        mu: the prior mean of u, (H, D).
        log_tau: the log pseudo-count of the prior, (H,).

    ``reference.py`` states the math. Eager fp16 / bf16 / fp32 inputs on CUDA run the kernels; float64, the CPU and
    ``torch.compile`` run the reference.
    """
    key = inference_key(u, gate_logits, mu, log_tau)
    kept = _KEPT.get(key)
    if kept is not None:
        return kept(u, gate_logits, mu, log_tau)
    check_inputs(u, gate_logits, mu, log_tau)
    tensors = (u, gate_logits, mu, log_tau)
    if kernel_backend(u.device) != "triton" or torch.compiler.is_compiling() or u.numel() == 0 \
            or any(t.dtype not in KERNEL_DTYPES for t in tensors):
        return zeros_weights_reference(u, gate_logits, mu, log_tau)
    if u.stride(-1) != 1:
        key = None  # the call's u is not the one the kernel reads
        u = u.contiguous()
    if eager_inference(*tensors):
        # nothing to differentiate: launch directly, without the autograd function's bookkeeping (host time)
        out, repeat = _bound_inference(u, gate_logits, mu, log_tau)
        _KEPT.keep(key, repeat)
        return out
    return _ZeroSWeightsFunction.apply(u, gate_logits, mu, log_tau)
