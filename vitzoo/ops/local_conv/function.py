"""The local convolution's entry points: the host launches of the kernels, their ``torch.library`` custom ops, the
autograd function and the dispatching :func:`local_conv`.

Eager calls launch the kernels directly; inside ``torch.compile`` the custom ops run, their kernels launched through
``wrap_triton``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..launch import KeptLaunches, bind_launch, eager_inference, inference_key, launcher
from ..utils import cdiv, kernel_backend, triton_available
from . import heuristics
from .reference import check_inputs, local_conv_reference

_PREFIX_ZERO, _PREFIX_FROM_X, _PREFIX_FROM_RESIDUAL = 0, 1, 2  # the kernels' PREFIX
_ACT_NONE, _ACT_SILU, _ACT_SILU_BACKWARD = 0, 1, 2  # the kernels' ACT
_ACTIVATION_CODES = {None: _ACT_NONE, "silu": _ACT_SILU}

if triton_available():
    from .kernels import _local_conv_dw_kernel, _local_conv_dw_rows_kernel, _local_conv_fwd_kernel

    def _fwd_launch(
            x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None,
            grid_h: int, grid_w: int, num_prefix_tokens: int, prefix_mode: int, act: int, out: torch.Tensor,
            flip: bool = False,
    ) -> tuple[tuple[int, int, int], tuple, dict]:
        """(grid, arguments, keywords) of the forward kernel writing ``out`` (``flip``: with the kernel flipped in
        both grid directions); the first five arguments are the tensors (x, weight, bias, residual, out; an absent
        one's slot takes x, which the kernel ignores there)."""
        b, n, c = x.shape
        block_c, block_w = heuristics.block_c(c), heuristics.block_w(grid_w)
        rows = heuristics.rows(grid_h)
        bands = cdiv(grid_h, rows)
        res = residual if residual is not None else x
        sw = weight.stride()
        args = (
            x, weight, bias if bias is not None else x, res, out,
            c, grid_h, grid_w, num_prefix_tokens, bands,
            x.stride(0), x.stride(1), sw[0] if weight.shape[0] > 1 else 0, sw[1], sw[2], sw[3],
            res.stride(0), res.stride(1), out.stride(0), out.stride(1),
        )
        keywords = dict(
            K=weight.shape[-1], HAS_BIAS=bias is not None,
            HAS_RESIDUAL=residual is not None and act != _ACT_SILU_BACKWARD, PREFIX=prefix_mode, ACT=act, FLIP=flip,
            ROWS=rows, BLOCK_W=block_w, BLOCK_C=block_c, num_warps=heuristics.NUM_WARPS,
        )
        return (b * bands, cdiv(grid_w, block_w), cdiv(c, block_c)), args, keywords

    def _local_conv_fwd(
            x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None,
            grid_h: int, grid_w: int, num_prefix_tokens: int, prefix_mode: int, out_dtype: torch.dtype,
            act: int = _ACT_NONE, direct_launch: bool = False, flip: bool = False,
    ) -> torch.Tensor:
        """The convolution's output (``flip``: with the kernel flipped in both grid directions); with ``act`` = SiLU's
        backward, ``residual`` carries the incoming gradient (read, not added)."""
        out = torch.empty(x.shape, dtype=out_dtype, device=x.device)
        grid, args, keywords = _fwd_launch(x, weight, bias, residual, grid_h, grid_w, num_prefix_tokens, prefix_mode,
                                           act, out, flip)
        launcher(_local_conv_fwd_kernel, direct_launch)[grid](*args, **keywords)
        return out

    def _local_conv_dw(
            x: torch.Tensor, grad: torch.Tensor, grid_h: int, grid_w: int, num_prefix_tokens: int, kernel_size: int,
            direct_launch: bool = False,
    ) -> torch.Tensor:
        """Per-(image, tile) partial sums of dw, (B, tiles, K * K, C) in fp32."""
        b, _, c = x.shape
        block_c = heuristics.block_c(c)
        if kernel_size == 3:  # the forward's bands of rows and blocks of columns, walked by input rows
            rows, block_w = heuristics.rows(grid_h), heuristics.block_w(grid_w)
            bands, column_blocks = cdiv(grid_h, rows), cdiv(grid_w, block_w)
            part = torch.empty((b, bands * column_blocks, 9, c), dtype=torch.float32, device=x.device)
            launcher(_local_conv_dw_rows_kernel, direct_launch)[(b * bands, column_blocks, cdiv(c, block_c))](
                x, grad, part, c, grid_h, grid_w, num_prefix_tokens, bands,
                x.stride(0), x.stride(1), grad.stride(0), grad.stride(1),
                ROWS=rows, BLOCK_W=block_w, BLOCK_C=block_c, num_warps=heuristics.NUM_WARPS,
            )
            return part
        tiles = cdiv(grid_h * grid_w, heuristics.DW_BLOCK_P)
        part = torch.empty((b, tiles, kernel_size * kernel_size, c), dtype=torch.float32, device=x.device)
        launcher(_local_conv_dw_kernel, direct_launch)[(b, tiles, cdiv(c, block_c))](
            x, grad, part, c, grid_h, grid_w, num_prefix_tokens, tiles,
            x.stride(0), x.stride(1), grad.stride(0), grad.stride(1),
            K=kernel_size, BLOCK_P=heuristics.DW_BLOCK_P, BLOCK_C=block_c, num_warps=heuristics.DW_NUM_WARPS,
        )
        return part

    _local_conv_fwd_op = torch.library.triton_op("vitzoo::local_conv_fwd", _local_conv_fwd, mutates_args=())
    _local_conv_dw_op = torch.library.triton_op("vitzoo::local_conv_dw", _local_conv_dw, mutates_args=())

    def _convolve(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None,
                  grid_h: int, grid_w: int, num_prefix_tokens: int, act: int, compiling: bool) -> torch.Tensor:
        """:func:`local_conv`'s output (:func:`_prefix_mode`, :func:`_output_dtype`); through the custom op when
        ``compiling``, launched directly otherwise."""
        return (_local_conv_fwd_op if compiling else _local_conv_fwd)(
            x, weight, bias, residual, grid_h, grid_w, num_prefix_tokens, _prefix_mode(residual),
            _output_dtype(x, residual), act, direct_launch=not compiling,
        )

    def _bound_inference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         residual: torch.Tensor | None, grid_h: int, grid_w: int, num_prefix_tokens: int,
                         act: int) -> tuple[torch.Tensor, Callable[..., torch.Tensor]]:
        """:func:`_convolve`'s eager output, and ``repeat(x, weight, bias, residual)``, which computes it for other
        inputs of the same :func:`_inference_key` with a bound launch."""
        shape, dtype, device = x.shape, _output_dtype(x, residual), x.device
        out = torch.empty(shape, dtype=dtype, device=device)
        grid, args, keywords = _fwd_launch(x, weight, bias, residual, grid_h, grid_w, num_prefix_tokens,
                                           _prefix_mode(residual), act, out)
        bound = bind_launch(_local_conv_fwd_kernel, grid, args, keywords)
        sizes = args[5:]

        def repeat(x, weight, bias, residual):
            out = torch.empty(shape, dtype=dtype, device=device)
            bound(x, weight, bias if bias is not None else x, residual if residual is not None else x, out, *sizes)
            return out

        return out, repeat

    class _LocalConvFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias, residual, grid_h, grid_w, num_prefix_tokens, act):
            out = _convolve(x, weight, bias, residual, grid_h, grid_w, num_prefix_tokens, act,
                            torch.compiler.is_compiling())
            ctx.save_for_backward(x, weight, bias)
            ctx.options = (grid_h, grid_w, num_prefix_tokens, bias is not None, residual is not None,
                           None if bias is None else bias.dtype, act)
            return out

        @staticmethod
        def backward(ctx, grad):
            x, weight, bias = ctx.saved_tensors
            grid_h, grid_w, prefix, has_bias, has_residual, bias_dtype, act = ctx.options
            compiling = torch.compiler.is_compiling()
            if grad.stride(-1) != 1:
                grad = grad.contiguous()
            if act == _ACT_SILU:
                # the gradient of the pre-activation, from the convolution recomputed in the same kernel; kept in fp32
                # (the reference takes it in fp32 too) for the two kernels that read it
                grad = (_local_conv_fwd_op if compiling else _local_conv_fwd)(
                    x, weight, bias, grad, grid_h, grid_w, prefix, _PREFIX_FROM_X, torch.float32, _ACT_SILU_BACKWARD,
                    direct_launch=not compiling,
                )
            dx = dw = dbias = None
            if ctx.needs_input_grad[0]:
                # the transposed convolution is the convolution with the flipped kernel (read flipped, not copied);
                # the prefix tokens' gradient passes through where they were copied from x, and is zero where the
                # residual supplied them
                dx = (_local_conv_fwd_op if compiling else _local_conv_fwd)(
                    grad, weight, None, None, grid_h, grid_w, prefix, _PREFIX_ZERO if has_residual else _PREFIX_FROM_X,
                    x.dtype, direct_launch=not compiling, flip=True,
                )
            if ctx.needs_input_grad[1]:
                k = weight.shape[-1]
                part = (_local_conv_dw_op if compiling else _local_conv_dw)(
                    x, grad, grid_h, grid_w, prefix, k, direct_launch=not compiling,
                )
                per_image = part.sum(dim=1) if weight.shape[0] > 1 else part.sum(dim=(0, 1)).unsqueeze(0)
                dw = per_image.view(weight.shape[0], k, k, weight.shape[1]).permute(0, 3, 1, 2).to(weight.dtype)
            if has_bias and ctx.needs_input_grad[2]:
                dbias = grad[:, prefix:].sum(dim=(0, 1), dtype=torch.float32).to(bias_dtype)
            dres = grad if has_residual and ctx.needs_input_grad[3] else None
            return dx, dw, dbias, dres, None, None, None, None


def _prefix_mode(residual: torch.Tensor | None) -> int:
    """Where :func:`local_conv`'s prefix tokens come from: the residual when there is one, else x."""
    return _PREFIX_FROM_RESIDUAL if residual is not None else _PREFIX_FROM_X


def _output_dtype(x: torch.Tensor, residual: torch.Tensor | None) -> torch.dtype:
    """:func:`local_conv`'s output dtype: the residual's when there is one, else x's."""
    return residual.dtype if residual is not None else x.dtype


# The launches kept for eager calls with nothing to differentiate (:func:`_inference_key`).
_KEPT = KeptLaunches()


def _inference_key(x, weight, bias, residual, grid_size, num_prefix_tokens, activation) -> tuple | None:
    """The key of an eager call with nothing to differentiate (:func:`~vitzoo.ops.launch.inference_key` of the
    tensors, the grid, the prefix and the activation); None for other calls, which are checked every time, also for
    a grid, prefix or activation of another type (the checks name them)."""
    try:
        h, w = grid_size
        if h.__class__ is not int or w.__class__ is not int or num_prefix_tokens.__class__ is not int \
                or activation not in _ACTIVATION_CODES:
            return None
    except (TypeError, ValueError):
        return None
    return inference_key(x, weight, bias, residual, options=(h, w, num_prefix_tokens, activation))


def local_conv(
        x: torch.Tensor,
        weight: torch.Tensor,
        grid_size: tuple[int, int],
        num_prefix_tokens: int,
        bias: torch.Tensor | None = None,
        residual: torch.Tensor | None = None,
        activation: str | None = None,
) -> torch.Tensor:
    """Depthwise convolution of the patch tokens of ``x``, plus ``bias`` and ``residual``; prefix tokens pass through.

    Args:
        x: (B, N, C) tokens, N = num_prefix_tokens + H * W in row-major grid order; any strides.
        weight: (1, C, K, K) one kernel for the batch (an ``nn.Conv2d(C, C, K, groups=C)`` weight, viewed), or
            (B, C, K, K) one per image; K odd, zero padding K // 2. Any strides; channels-last ones (taps outer,
            channels contiguous) are what the kernel reads fastest.
        grid_size: the patch grid (H, W).
        num_prefix_tokens: cls / register tokens in front of the patches.
        bias: optional (C,) added to the convolved patches.
        residual: optional (B, N, C) added to every output token; the prefix tokens then come from it, not from x.
        activation: None or 'silu', applied to every output token (prefix tokens included); not with a residual.

    Returns:
        (B, N, C) in the residual's dtype (x's without one); fp32 accumulation.
    """
    key = _inference_key(x, weight, bias, residual, grid_size, num_prefix_tokens, activation)
    kept = _KEPT.get(key)
    if kept is not None:
        return kept(x, weight, bias, residual)
    tensors = [t for t in (x, weight, bias, residual) if t is not None]
    if kernel_backend(x.device) == "triton" and all(t.dtype != torch.float64 for t in tensors) and x.numel() > 0:
        check_inputs(x, weight, grid_size, num_prefix_tokens, bias, residual, activation)
        if x.stride(-1) != 1 or (residual is not None and residual.stride(-1) != 1):
            key = None  # the call's tensors are not the ones the kernel reads
            x = x if x.stride(-1) == 1 else x.contiguous()
            residual = residual if residual is None or residual.stride(-1) == 1 else residual.contiguous()
        if eager_inference(*tensors):
            # nothing to differentiate: launch directly, without the autograd Function's bookkeeping (host time)
            out, repeat = _bound_inference(x, weight, bias, residual, int(grid_size[0]), int(grid_size[1]),
                                           int(num_prefix_tokens), _ACTIVATION_CODES[activation])
            _KEPT.keep(key, repeat)
            return out
        return _LocalConvFunction.apply(x, weight, bias, residual, int(grid_size[0]), int(grid_size[1]),
                                        int(num_prefix_tokens), _ACTIVATION_CODES[activation])
    return local_conv_reference(x, weight, grid_size, num_prefix_tokens, bias, residual, activation)
