"""FEM's ops' entry points: the host launches of the kernels, the autograd functions and the dispatching
:func:`free_energy_values` and :func:`free_energy_mix` (no custom ops: inside ``torch.compile`` they trace their
PyTorch references, which Inductor fuses itself, as ZeroS's weightings do).

The kernels replace the mixer's PyTorch form, about seven launches before the prior and fifteen after it (fp32 copies
of the value projections and gate logits included), with one launch each way per op, for eager callers.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..launch import KeptLaunches, bind_launch, cached_launcher, eager_inference, inference_key
from ..utils import KERNEL_DTYPES, cdiv, kernel_backend, padded, triton_available
from . import heuristics
from .reference import (
    GATE_FLOOR,
    LOG_RESTORE_EPS,
    VALUE_LOGEXP_CAP,
    check_inputs,
    check_value_inputs,
    free_energy_mix_reference,
    free_energy_values_reference,
)

if triton_available():
    from .kernels import (
        _free_energy_mix_bwd_kernel,
        _free_energy_mix_fwd_kernel,
        _free_energy_values_bwd_kernel,
        _free_energy_values_fwd_kernel,
    )

    def _values_bwd_launch(v: torch.Tensor) -> tuple[tuple, tuple, dict]:
        """(grid, the arguments after the tensors, keywords) of the values' backward."""
        batch, num_tokens, heads, dv = v.shape
        sizes = (num_tokens, heads, dv, v.stride(0), v.stride(1), v.stride(2), VALUE_LOGEXP_CAP)
        meta = dict(BLOCK_N=heuristics.BLOCK_T, BLOCK_D=heuristics.block_d(dv), num_warps=heuristics.VALUES_NUM_WARPS)
        return (batch * heads,), sizes, meta

    def _values_fwd_launches(v: torch.Tensor) -> tuple[torch.Tensor, tuple[tuple, ...], tuple]:
        """(the chunks' maxima buffer, each launch's (grid, keywords), the arguments after the five tensors) of the
        values' forward: one launch, or two over chunks of tokens (:func:`.heuristics.values_chunks`)."""
        batch, num_tokens, heads, dv = v.shape
        chunks, chunk = heuristics.values_chunks(batch * heads, num_tokens, v.device)
        sizes = (num_tokens, heads, dv, v.stride(0), v.stride(1), v.stride(2), VALUE_LOGEXP_CAP, chunk, chunks)
        meta = dict(BLOCK_N=heuristics.BLOCK_T, BLOCK_D=heuristics.block_d(dv), BLOCK_S=padded(chunks),
                    num_warps=heuristics.VALUES_NUM_WARPS)
        if chunks == 1:
            return v, (((batch * heads, 1), dict(STAGE=0, **meta)),), sizes
        part = torch.empty((batch * heads, chunks, dv), dtype=torch.float32, device=v.device)
        return part, tuple(((batch * heads, chunks), dict(STAGE=stage, **meta)) for stage in (1, 2)), sizes

    def _values_buffers(v: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        batch, num_tokens, heads, dv = v.shape
        return (torch.empty((batch, num_tokens, heads, 2 * dv), dtype=dtype, device=v.device),
                torch.empty((batch, 1, heads, dv), dtype=torch.float32, device=v.device))

    def _free_energy_values_fwd(v: torch.Tensor, beta: torch.Tensor,
                                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        values, shift = _values_buffers(v, dtype)
        part, launches, sizes = _values_fwd_launches(v)
        for grid, meta in launches:
            cached_launcher(_free_energy_values_fwd_kernel)[grid](v, beta, values, shift, part, *sizes, **meta)
        return values, shift

    def _bound_values(v: torch.Tensor, beta: torch.Tensor, dtype: torch.dtype
                      ) -> tuple[tuple[torch.Tensor, torch.Tensor], Callable[..., tuple[torch.Tensor, torch.Tensor]]]:
        """:func:`_free_energy_values_fwd`'s outputs, and ``repeat(v, beta)``, which computes them for other inputs of
        the same key with bound launches."""
        values, shift = _values_buffers(v, dtype)
        part, launches, sizes = _values_fwd_launches(v)
        split, part_shape = part is not v, tuple(part.shape)
        bound = [bind_launch(_free_energy_values_fwd_kernel, grid, (v, beta, values, shift, part, *sizes), meta)
                 for grid, meta in launches]

        def repeat(v, beta):
            values, shift = _values_buffers(v, dtype)
            part = torch.empty(part_shape, dtype=torch.float32, device=v.device) if split else v
            for launch in bound:
                launch(v, beta, values, shift, part, *sizes)
            return values, shift

        return (values, shift), repeat

    class _FreeEnergyValuesFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, v, beta, dtype):
            values, shift = _free_energy_values_fwd(v, beta, dtype)
            ctx.save_for_backward(v, beta, shift)
            ctx.mark_non_differentiable(shift)
            # the shift has no gradient: without this autograd fills one with zeros (a launch) for every backward
            ctx.set_materialize_grads(False)
            return values, shift

        @staticmethod
        def backward(ctx, grad, _):
            # called only for a gradient of the values (the shift, non-differentiable, never has one)
            v, beta, shift = ctx.saved_tensors
            d_v = torch.empty(tuple(v.shape), dtype=v.dtype, device=v.device)
            d_beta = torch.empty((v.shape[0], *beta.shape), dtype=torch.float32, device=v.device)
            grid, sizes, meta = _values_bwd_launch(v)
            cached_launcher(_free_energy_values_bwd_kernel)[grid](v, beta, shift, grad.contiguous(), d_v, d_beta,
                                                                  *sizes, **meta)
            return d_v, d_beta.sum(dim=0).to(beta.dtype), None

    def _launch_args(read: torch.Tensor, gate_logits: torch.Tensor) -> tuple[tuple, tuple, dict]:
        batch, num_tokens, heads, double_dv = read.shape
        dv = double_dv // 2
        tokens = batch * num_tokens
        grid = (cdiv(tokens, heuristics.BLOCK_T), heads)
        sizes = (tokens, num_tokens, heads, dv, heads * dv, read.stride(0), read.stride(1), read.stride(2),
                 gate_logits.stride(0), gate_logits.stride(1), math.log(LOG_RESTORE_EPS), GATE_FLOOR,
                 torch.finfo(torch.float32).tiny, math.sqrt(dv))
        meta = dict(BLOCK_T=heuristics.BLOCK_T, BLOCK_D=heuristics.block_d(dv), num_warps=heuristics.MIX_NUM_WARPS)
        return grid, sizes, meta

    def _mix_output(read: torch.Tensor, gate_logits: torch.Tensor) -> torch.Tensor:
        batch, num_tokens, heads, double_dv = read.shape
        return torch.empty((batch, num_tokens, heads * double_dv // 2), dtype=gate_logits.dtype, device=read.device)

    def _free_energy_mix_fwd(read, shift, beta, gate_logits) -> torch.Tensor:
        out = _mix_output(read, gate_logits)
        grid, sizes, meta = _launch_args(read, gate_logits)
        cached_launcher(_free_energy_mix_fwd_kernel)[grid](read, shift, beta, gate_logits, out, *sizes, **meta)
        return out

    def _bound_mix(read, shift, beta, gate_logits) -> tuple[torch.Tensor, Callable[..., torch.Tensor]]:
        """:func:`_free_energy_mix_fwd`'s output, and ``repeat(read, shift, beta, gate_logits)``, which computes it for
        other inputs of the same key with a bound launch."""
        out = _mix_output(read, gate_logits)
        grid, sizes, meta = _launch_args(read, gate_logits)
        bound = bind_launch(_free_energy_mix_fwd_kernel, grid, (read, shift, beta, gate_logits, out, *sizes), meta)

        def repeat(read, shift, beta, gate_logits):
            out = _mix_output(read, gate_logits)
            bound(read, shift, beta, gate_logits, out, *sizes)
            return out

        return out, repeat

    def _free_energy_mix_bwd(grad, read, shift, beta, gate_logits) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(d read (B, N, H, 2 Dv), d gate_logits (B, N, 2 H Dv), d beta (H, Dv) in fp32)."""
        grid, sizes, meta = _launch_args(read, gate_logits)
        d_read = torch.empty(tuple(read.shape), dtype=read.dtype, device=read.device)
        d_gate_logits = torch.empty(tuple(gate_logits.shape), dtype=gate_logits.dtype, device=read.device)
        d_beta = torch.empty((grid[0], *beta.shape), dtype=torch.float32, device=read.device)
        cached_launcher(_free_energy_mix_bwd_kernel)[grid](read, shift, beta, gate_logits, grad, d_read, d_gate_logits,
                                                           d_beta, *sizes, **meta)
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


# The launches kept for eager calls with nothing to differentiate, by op and every tensor's tensor_key (and dtype).
_KEPT = KeptLaunches()


def _inference_key(op: str, *tensors: torch.Tensor, dtype: torch.dtype | None = None) -> tuple | None:
    """The key of an eager call of ``op`` with nothing to differentiate (:func:`~vitzoo.ops.launch.inference_key`
    of the tensors, the op and the values' dtype); None for other calls, which are checked every time."""
    if dtype is not None and not isinstance(dtype, torch.dtype):
        return None
    return inference_key(*tensors, options=(op, dtype))


def free_energy_values(v: torch.Tensor, beta: torch.Tensor,
                       dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The values FEM's prior reads, (B, N, H, 2 Dv) in ``dtype``, and the shift M, (B, 1, H, Dv) in fp32;
    ``reference.py`` states the math.

    Args:
        v: the value projections (B, N, H, Dv), any strides (a slice of the fused projection).
        beta: the inverse temperatures, (H, Dv).
        dtype: the values' dtype, the one the prior reads them in (default fp32); the arithmetic is fp32 regardless.

    Eager fp16 / bf16 / fp32 inputs on CUDA run the kernels; float64, the CPU and ``torch.compile`` run the reference.
    """
    key = _inference_key("values", v, beta, dtype=dtype)
    kept = _KEPT.get(key)
    if kept is not None:
        return kept(v, beta)
    check_value_inputs(v, beta)
    if kernel_backend(v.device) != "triton" or torch.compiler.is_compiling() or v.numel() == 0 \
            or any(t.dtype not in KERNEL_DTYPES for t in (v, beta)):
        return free_energy_values_reference(v, beta, dtype)
    dtype = torch.float32 if dtype is None else dtype
    if dtype not in KERNEL_DTYPES:
        raise ValueError(f"free_energy_values: dtype must be float16, bfloat16 or float32 for the kernels, got {dtype}")
    if v.stride(-1) != 1 or not beta.is_contiguous():
        key = None  # the call's tensors are not the ones the kernel reads
        v, beta = (v if v.stride(-1) == 1 else v.contiguous()), beta.contiguous()
    if eager_inference(v, beta):
        out, repeat = _bound_values(v, beta, dtype)
        _KEPT.keep(key, repeat)
        return out
    return _FreeEnergyValuesFunction.apply(v, beta, dtype)


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
    key = _inference_key("mix", read, shift, beta, gate_logits)
    kept = _KEPT.get(key)
    if kept is not None:
        return kept(read, shift, beta, gate_logits)
    check_inputs(read, shift, beta, gate_logits)
    tensors = (read, shift, beta, gate_logits)
    if kernel_backend(read.device) != "triton" or torch.compiler.is_compiling() or read.numel() == 0 \
            or any(t.dtype not in KERNEL_DTYPES for t in tensors):
        return free_energy_mix_reference(read, shift, beta, gate_logits)
    # the kernels take a unit stride along the channels; shift and beta are small, read as contiguous
    if read.stride(-1) != 1 or gate_logits.stride(-1) != 1 or not shift.is_contiguous() or not beta.is_contiguous():
        key = None  # the call's tensors are not the ones the kernel reads
        read, gate_logits = (t if t.stride(-1) == 1 else t.contiguous() for t in (read, gate_logits))
        shift, beta = shift.contiguous(), beta.contiguous()
    if eager_inference(*tensors):
        # nothing to differentiate: launch directly, without the autograd function's bookkeeping (host time)
        out, repeat = _bound_mix(read, shift, beta, gate_logits)
        _KEPT.keep(key, repeat)
        return out
    return _FreeEnergyMixFunction.apply(read, shift, beta, gate_logits)
