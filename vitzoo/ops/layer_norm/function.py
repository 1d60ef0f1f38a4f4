"""Layer norm's and RMS norm's entry points: the host launches of the kernels, their ``torch.library`` custom ops, the
autograd function and the dispatching :func:`layer_norm` / :func:`rms_norm`.

Eager calls launch the kernels directly; inside ``torch.compile`` the custom ops run, their kernels launched through
``wrap_triton``. The kernels take the parameters in their own dtype (fp32 under autocast): no cast launches.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..launch import KeptLaunches, bind_launch, eager_inference, inference_key, launcher
from ..utils import KERNEL_DTYPES, cdiv, kernel_backend, multiprocessor_count, triton_available
from . import heuristics
from .reference import add_layer_norm_reference, check_inputs, layer_norm_reference, rms_norm_reference

if triton_available():
    from .kernels import _norm_bwd_kernel, _norm_fwd_kernel

    def _fwd_pointers(
            x: torch.Tensor, update: torch.Tensor | None, total: torch.Tensor | None, weight: torch.Tensor | None,
            bias: torch.Tensor | None, gate: torch.Tensor | None, y: torch.Tensor, mean: torch.Tensor | None,
            rstd: torch.Tensor | None,
    ) -> tuple[torch.Tensor, ...]:
        """The forward kernel's tensor arguments, in its order (an absent one's slot takes a tensor it ignores)."""
        return (x, update if update is not None else x, total if total is not None else y,
                weight if weight is not None else x, bias if bias is not None else x, gate if gate is not None else x,
                y, mean if mean is not None else y, rstd if rstd is not None else y)

    def _fwd_launch(
            x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, gate: torch.Tensor | None,
            y: torch.Tensor, mean: torch.Tensor | None, rstd: torch.Tensor | None, eps: float, rms: bool,
            update: torch.Tensor | None = None, total: torch.Tensor | None = None,
    ) -> tuple[tuple[int], tuple, dict]:
        """(grid, arguments, keywords) of the forward kernel that normalises the rows of ``x`` (see :func:`_rows`)
        into ``y`` (times silu of the ``gate`` rows when given); ``rstd`` (and ``mean`` unless ``rms``) receive the
        statistics when given. With ``update`` the rows normalised are x + update, written to ``total``."""
        n = x.shape[-1]
        m = x.numel() // n
        block_m, block_n, num_warps = heuristics.launch_shape(n)
        args = (
            *_fwd_pointers(x, update, total, weight, bias, gate, y, mean, rstd), m, n, _row_stride(x),
            _row_stride(update) if update is not None else 0, _row_stride(total) if total is not None else 0,
            _row_stride(gate) if gate is not None else 0, _row_stride(y), eps,
        )
        keywords = dict(
            HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, RMS=rms, GATE=gate is not None,
            ADD=update is not None, SAVE_STATS=rstd is not None, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps,
        )
        return (cdiv(m, block_m),), args, keywords

    def _launch_fwd(
            x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, gate: torch.Tensor | None,
            y: torch.Tensor, mean: torch.Tensor | None, rstd: torch.Tensor | None, eps: float, rms: bool,
            direct_launch: bool, update: torch.Tensor | None = None, total: torch.Tensor | None = None,
    ) -> None:
        """Launch the forward kernel of :func:`_fwd_launch`."""
        grid, args, keywords = _fwd_launch(x, weight, bias, gate, y, mean, rstd, eps, rms, update, total)
        launcher(_norm_fwd_kernel, direct_launch)[grid](*args, **keywords)

    def _bound_inference(
            x: torch.Tensor, update: torch.Tensor | None, weight: torch.Tensor | None, bias: torch.Tensor | None,
            gate: torch.Tensor | None, eps: float, rms: bool,
    ) -> tuple[torch.Tensor | tuple[torch.Tensor, torch.Tensor], Callable[..., Any]]:
        """The outputs of an inference forward (nothing to differentiate: no statistics, no autograd function) of rows
        as the kernels read them (see :func:`_rows`), y or (total, y), and ``repeat(x, update, weight, bias, gate)``,
        which computes the same for other tensors of the same :func:`_inference_key` with one bound launch
        (:func:`~vitzoo.ops.launch.bind_launch`)."""
        shape, dtype, device = x.shape, x.dtype, x.device
        total = None if update is None else torch.empty(shape, dtype=dtype, device=device)
        y = torch.empty(shape, dtype=dtype, device=device)
        grid, args, keywords = _fwd_launch(x, weight, bias, gate, y, None, None, eps, rms, update, total)
        bound = bind_launch(_norm_fwd_kernel, grid, args, keywords)
        sizes = args[9:]

        def repeat(x, update, weight, bias, gate):
            y = torch.empty(shape, dtype=dtype, device=device)
            total = None if update is None else torch.empty(shape, dtype=dtype, device=device)
            bound(*_fwd_pointers(x, update, total, weight, bias, gate, y, None, None), *sizes)
            return y if total is None else (total, y)

        return (y if total is None else (total, y)), repeat

    def _norm_fwd(
            x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, gate: torch.Tensor | None,
            eps: float, rms: bool, direct_launch: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(y, mean, rstd) for the rows of ``x`` (see :func:`_rows`), the statistics (fp32, one per row) for the
        backward; the mean is empty for RMS."""
        m = x.numel() // x.shape[-1]
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        mean = torch.empty((0,) if rms else (m,), dtype=torch.float32, device=x.device)
        rstd = torch.empty((m,), dtype=torch.float32, device=x.device)
        _launch_fwd(x, weight, bias, gate, y, None if rms else mean, rstd, eps, rms, direct_launch)
        return y, mean, rstd

    def _add_norm_fwd(
            x: torch.Tensor, update: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
            direct_launch: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(total, y, mean, rstd): total = x + update (rows of one dtype, see :func:`_rows`) and its layer norm, with
        the statistics for the backward."""
        m = x.numel() // x.shape[-1]
        total = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        mean = torch.empty((m,), dtype=torch.float32, device=x.device)
        rstd = torch.empty((m,), dtype=torch.float32, device=x.device)
        _launch_fwd(x, weight, bias, None, y, mean, rstd, eps, False, direct_launch, update, total)
        return total, y, mean, rstd

    def _norm_bwd(
            grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, gate: torch.Tensor | None,
            mean: torch.Tensor, rstd: torch.Tensor, has_bias: bool, rms: bool, direct_launch: bool = False,
            total_grad: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(dx, per-program partial sums (K, P, N) fp32 of dweight then dbias (K counts those present: one buffer, so
        that one reduction finishes both), dgate); dgate is empty without a gate (dx itself for eager callers).
        ``total_grad``: rows added to dx (the gradient that reaches the normalised rows from elsewhere, when they are
        a residual sum)."""
        n = x.shape[-1]
        m = x.numel() // n
        sms = multiprocessor_count(x.device) if x.device.type == "cuda" else 1
        programs = heuristics.backward_programs(m, n, sms)
        block_m, block_n, num_warps = heuristics.launch_shape(n)
        dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        partial = torch.empty((int(weight is not None) + int(has_bias), programs, n), dtype=torch.float32,
                              device=x.device)
        if gate is not None:
            dg = torch.empty(x.shape, dtype=gate.dtype, device=x.device)
        else:
            # no gate gradient: eager callers take dx as the unused placeholder (no allocation), the custom op an
            # empty tensor of its own (its outputs must not alias)
            dg = dx if direct_launch else torch.empty((0,), dtype=x.dtype, device=x.device)
        launcher(_norm_bwd_kernel, direct_launch)[(programs,)](
            x, weight if weight is not None else x, gate if gate is not None else x, grad,
            total_grad if total_grad is not None else grad, dx,
            dg if dg.numel() else dx, mean if mean.numel() else rstd, rstd, partial[0] if weight is not None else dx,
            partial[-1] if has_bias else dx, m, n, _row_stride(x), _row_stride(gate) if gate is not None else 0,
            _row_stride(grad), _row_stride(total_grad) if total_grad is not None else 0, _row_stride(dx),
            _row_stride(dg) if gate is not None else 0,
            HAS_WEIGHT=weight is not None, HAS_BIAS=has_bias, RMS=rms, GATE=gate is not None,
            ADD=total_grad is not None, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps,
        )
        return dx, partial, dg

    # The custom ops traced by torch.compile, kernels launched through wrap_triton.
    @torch.library.triton_op("vitzoo::norm_fwd", mutates_args=())
    def _norm_fwd_op(
            x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, gate: torch.Tensor | None,
            eps: float, rms: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _norm_fwd(x, weight, bias, gate, eps, rms)

    @torch.library.triton_op("vitzoo::add_norm_fwd", mutates_args=())
    def _add_norm_fwd_op(
            x: torch.Tensor, update: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return _add_norm_fwd(x, update, weight, bias, eps)

    @torch.library.triton_op("vitzoo::norm_bwd", mutates_args=())
    def _norm_bwd_op(
            grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, gate: torch.Tensor | None,
            mean: torch.Tensor, rstd: torch.Tensor, has_bias: bool, rms: bool, total_grad: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _norm_bwd(grad, x, weight, gate, mean, rstd, has_bias, rms, total_grad=total_grad)

    def _param_grads(partial: torch.Tensor, weight: torch.Tensor | None, bias_dtype: torch.dtype | None,
                     needed: tuple[bool, bool]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """dweight and dbias (None where absent or not needed) from the backward's partial sums, in one reduction."""
        if not any(needed) or partial.shape[0] == 0:
            return None, None
        sums = partial.sum(dim=1)
        dweight = sums[0].to(weight.dtype) if weight is not None and needed[0] else None
        dbias = sums[-1].to(bias_dtype) if bias_dtype is not None and needed[1] else None
        return dweight, dbias

    class _NormFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias, gate, eps, rms):
            compiling = torch.compiler.is_compiling()
            y, mean, rstd = (_norm_fwd_op(x, weight, bias, gate, eps, rms) if compiling
                             else _norm_fwd(x, weight, bias, gate, eps, rms, direct_launch=True))
            ctx.save_for_backward(x, weight, gate, mean, rstd)
            ctx.options = (bias is not None, rms, None if bias is None else bias.dtype)
            return y

        @staticmethod
        def backward(ctx, grad):
            x, weight, gate, mean, rstd = ctx.saved_tensors
            has_bias, rms, bias_dtype = ctx.options
            grad = _rows(grad)
            compiling = torch.compiler.is_compiling()
            dx, partial, dg = (_norm_bwd_op(grad, x, weight, gate, mean, rstd, has_bias, rms, None) if compiling
                               else _norm_bwd(grad, x, weight, gate, mean, rstd, has_bias, rms, direct_launch=True))
            dweight, dbias = _param_grads(partial, weight, bias_dtype, ctx.needs_input_grad[1:3])
            dgate = dg if gate is not None and ctx.needs_input_grad[3] else None
            return dx if ctx.needs_input_grad[0] else None, dweight, dbias, dgate, None, None

    class _AddNormFunction(torch.autograd.Function):
        """(x + update, layer_norm(x + update)); the sum's gradient from both outputs is one kernel's dx."""

        @staticmethod
        def forward(ctx, x, update, weight, bias, eps):
            # (gradients of unused outputs arrive as zeros: torch.compile cannot trace set_materialize_grads)
            compiling = torch.compiler.is_compiling()
            total, y, mean, rstd = (_add_norm_fwd_op(x, update, weight, bias, eps) if compiling
                                    else _add_norm_fwd(x, update, weight, bias, eps, direct_launch=True))
            ctx.save_for_backward(total, weight, mean, rstd)
            ctx.bias_dtype = None if bias is None else bias.dtype
            return total, y

        @staticmethod
        def backward(ctx, total_grad, grad):
            total, weight, mean, rstd = ctx.saved_tensors
            has_bias = ctx.bias_dtype is not None
            grad, total_grad = _rows(grad), _rows(total_grad)
            if torch.compiler.is_compiling():
                dx, partial, _ = _norm_bwd_op(grad, total, weight, None, mean, rstd, has_bias, False, total_grad)
            else:
                dx, partial, _ = _norm_bwd(grad, total, weight, None, mean, rstd, has_bias, False,
                                           direct_launch=True, total_grad=total_grad)
            dweight, dbias = _param_grads(partial, weight, ctx.bias_dtype, ctx.needs_input_grad[2:4])
            return (dx if ctx.needs_input_grad[0] else None, dx if ctx.needs_input_grad[1] else None, dweight,
                    dbias, None)


def takes_kernel(x: torch.Tensor, params: tuple[torch.Tensor | None, ...]) -> bool:
    """Whether :func:`layer_norm` / :func:`rms_norm` of ``x`` with ``params`` run the kernels: fp16 / bf16 / fp32 rows
    up to :data:`.heuristics.MAX_WIDTH` wide with the Triton backend; float64 and empty inputs stay on the reference
    (the kernels accumulate in fp32; an empty grid is no launch)."""
    return (kernel_backend(x.device) == "triton" and x.dtype in KERNEL_DTYPES and x.numel() > 0
            and x.shape[-1] <= heuristics.MAX_WIDTH
            and all(p.dtype in KERNEL_DTYPES and p.device == x.device for p in params if p is not None))


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as the kernels read it: rows of the last dim, unit last stride, one stride from a row to the next (a
    contiguous tensor of any rank, or a 2-D one whose rows are strided); otherwise a (rows, N) view or copy."""
    if t.stride(-1) == 1 and (t.dim() <= 2 or t.is_contiguous()):
        return t
    rows = t.reshape(-1, t.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _row_stride(t: torch.Tensor) -> int:
    """The distance between consecutive rows of a tensor :func:`_rows` returns: N when it is contiguous (whose size-1
    dims may carry any stride), else its 2-D row stride."""
    return t.shape[-1] if t.is_contiguous() else t.stride(-2)


def _shaped(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    # a view only where the rows were reshaped (a view op costs host time on every call)
    return t if t.shape == shape else t.view(shape)


# The launches kept for eager calls with nothing to differentiate (:func:`_inference_key`).
_KEPT = KeptLaunches()


def _norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
          rms: bool, gate: torch.Tensor | None = None, key: tuple | None = None) -> torch.Tensor:
    """The kernels' norm of ``x``; an inference call keeps its launch under ``key`` where the kernels read the
    call's own tensors (no reshaped rows)."""
    shape = x.shape
    rows, gate_rows = _rows(x), None if gate is None else _rows(gate)
    if eager_inference(x, weight, bias, gate):
        y, repeat = _bound_inference(rows, None, weight, bias, gate_rows, float(eps), rms)
        if rows is x and gate_rows is gate:
            _KEPT.keep(key, repeat)
        return _shaped(y, shape)
    return _shaped(_NormFunction.apply(rows, weight, bias, gate_rows, float(eps), rms), shape)


def _add_norm(x: torch.Tensor, update: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
              eps: float, key: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + update, its norm) from the kernel; an inference call keeps its launch as :func:`_norm` does."""
    shape = x.shape
    rows, update_rows = _rows(x), _rows(update)
    if eager_inference(x, update, weight, bias):
        (total, y), repeat = _bound_inference(rows, update_rows, weight, bias, None, float(eps), False)
        if rows is x and update_rows is update:
            _KEPT.keep(key, repeat)
    else:
        total, y = _AddNormFunction.apply(rows, update_rows, weight, bias, float(eps))
    return _shaped(total, shape), _shaped(y, shape)


def _inference_key(op: str, x: torch.Tensor, update: torch.Tensor | None, weight: torch.Tensor | None,
                   bias: torch.Tensor | None, gate: torch.Tensor | None, eps: float) -> tuple | None:
    """The key of an eager call with nothing to differentiate (:func:`~vitzoo.ops.launch.inference_key` of the
    tensors, the op and eps); None for other calls, which are checked and set up every time."""
    if eps.__class__ is not float:
        return None
    return inference_key(x, update, weight, bias, gate, options=(op, eps))


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               eps: float = 1e-5) -> torch.Tensor:
    """Layer norm over the last dim of ``x`` (any leading shape), in ``x``'s dtype with fp32 statistics.

    Args:
        x: (..., N) activations, fp16 / bf16 / fp32 for the kernels (float64 runs the reference).
        weight: optional (N,) scale, in any kernel dtype (fp32 parameters are read as they are).
        bias: optional (N,) shift.
        eps: added to the variance.
    """
    key = _inference_key("layer_norm", x, None, weight, bias, None, eps)
    kept = _KEPT.get(key)
    if kept is not None:
        return kept(x, None, weight, bias, None)
    check_inputs("layer_norm", x, weight, bias)
    if takes_kernel(x, (weight, bias)):
        return _norm(x, weight, bias, eps, rms=False, key=key)
    return layer_norm_reference(x, weight, bias, eps)


def add_layer_norm(x: torch.Tensor, update: torch.Tensor, weight: torch.Tensor | None = None,
                   bias: torch.Tensor | None = None, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + update, layer_norm(x + update)): a residual add and the norm that reads its result, in one kernel.

    The sum is rounded to the inputs' dtype and normalised as rounded, so both outputs equal ``x + update`` followed
    by :func:`layer_norm`; where the kernel does not apply (other dtypes or shapes of ``update``, float64, the
    reference backend) that is what runs.

    Args:
        x: (..., N) residual stream.
        update: the residual update, x's shape and (for the kernel) dtype.
        weight, bias, eps: as :func:`layer_norm`.
    """
    key = _inference_key("add_layer_norm", x, update, weight, bias, None, eps)
    kept = _KEPT.get(key)
    if kept is not None:
        return kept(x, update, weight, bias, None)
    if update.shape != x.shape or not takes_kernel(x, (weight, bias, update)) or update.dtype != x.dtype:
        return add_layer_norm_reference(x, update, weight, bias, eps)
    check_inputs("add_layer_norm", x, weight, bias)
    return _add_norm(x, update, weight, bias, eps, key=key)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6,
             gate: torch.Tensor | None = None) -> torch.Tensor:
    """RMS norm over the last dim of ``x``, as :func:`layer_norm` without centring and bias; with ``gate`` (x's
    shape) the output is multiplied by silu(gate) in the same pass (DeltaNet's gated output norm)."""
    key = _inference_key("rms_norm", x, None, weight, None, gate, eps)
    kept = _KEPT.get(key)
    if kept is not None:
        return kept(x, None, weight, None, gate)
    check_inputs("rms_norm", x, weight, None, gate)
    if takes_kernel(x, (weight, gate)):
        return _norm(x, weight, None, eps, rms=True, gate=gate, key=key)
    return rms_norm_reference(x, weight, eps, gate)
