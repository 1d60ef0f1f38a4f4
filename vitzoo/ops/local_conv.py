"""Depthwise K x K convolution over the patch grid of a (B, N, C) token sequence, fused with what surrounds it.

With P prefix (cls / register) tokens and an H x W patch grid (N = P + H * W), per channel c:

    out[b, P + p, c] = residual[b, P + p, c] + bias[c] + sum_{i,j} w[b, c, i, j] x[b, P + p + (i - K//2, j - K//2), c]
    out[b, t, c]     = residual[b, t, c] if a residual is given, else x[b, t, c]          (prefix tokens, t < P)

where the grid offset is zero-padded at the borders (``F.conv2d`` with padding K // 2). ``w`` is one kernel for the
whole batch (B_w = 1: DeltaNet's and H3's short convolutions, an ``nn.Conv2d`` weight) or one per image (B_w = B:
InLine's predicted local residual). The mixers used to move the tokens to an NCHW grid, convolve, move them back
and concatenate the prefix: four passes over the activations and, for per-image kernels, PyTorch's slow
``groups = B * C`` path. The Triton kernel reads the tokens where they are (any strides, unit stride on C, e.g. a
view of a fused qkv projection) and writes the final tokens in one pass, accumulating in fp32.

The backward is the same kernel on the gradient with the kernel flipped (dx), a per-tile partial-sum kernel for
dw (summed deterministically afterwards, no atomics), and plain reductions for the bias; d residual is the
gradient itself.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._backend import cdiv, kernel_backend, launcher

_PREFIX_ZERO, _PREFIX_FROM_X, _PREFIX_FROM_RESIDUAL = 0, 1, 2


def _check_inputs(x: torch.Tensor, weight: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int,
                  bias: torch.Tensor | None, residual: torch.Tensor | None) -> None:
    if x.dim() != 3:
        raise ValueError(f"local_conv expects x of shape (B, N, C), got {tuple(x.shape)}")
    b, n, c = x.shape
    h, w = grid_size
    if n != num_prefix_tokens + h * w:
        raise ValueError(
            f"local_conv: x has {n} tokens but grid_size={tuple(grid_size)} with {num_prefix_tokens} prefix token(s) "
            f"needs {num_prefix_tokens + h * w}"
        )
    if weight.dim() != 4 or weight.shape[1] != c or weight.shape[2] != weight.shape[3] or weight.shape[0] not in (1, b):
        raise ValueError(
            f"local_conv: weight must be (1 or B, C, K, K) = (1 or {b}, {c}, K, K), got {tuple(weight.shape)}"
        )
    if weight.shape[-1] % 2 == 0:
        raise ValueError(f"local_conv: kernel size must be odd (centred), got {weight.shape[-1]}")
    if bias is not None and tuple(bias.shape) != (c,):
        raise ValueError(f"local_conv: bias must be ({c},), got {tuple(bias.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"local_conv: residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")


def local_conv_reference(
        x: torch.Tensor,
        weight: torch.Tensor,
        grid_size: tuple[int, int],
        num_prefix_tokens: int,
        bias: torch.Tensor | None = None,
        residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain PyTorch :func:`local_conv` (same arguments): the specification of the kernel."""
    _check_inputs(x, weight, grid_size, num_prefix_tokens, bias, residual)
    b, n, c = x.shape
    h, w = grid_size
    p = num_prefix_tokens
    k = weight.shape[-1]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    out_dtype = residual.dtype if residual is not None else x.dtype
    grid = x[:, p:].to(acc).transpose(1, 2).reshape(1, b * c, h, w)
    kernels = weight.to(acc).expand(b, c, k, k).reshape(b * c, 1, k, k)
    patches = F.conv2d(grid, kernels, padding=k // 2, groups=b * c).reshape(b, c, h * w).transpose(1, 2)
    if bias is not None:
        patches = patches + bias.to(acc)
    source = residual if residual is not None else x
    if residual is not None:
        patches = patches + residual[:, p:].to(acc)
    return torch.cat([source[:, :p].to(acc), patches], dim=1).to(out_dtype)


try:
    import triton
    import triton.language as tl
except ImportError:  # the module stays importable; kernel_backend() then always picks the reference
    triton = None

_BLOCK_P = 64  # grid positions per program


def _block_c(channels: int) -> int:
    return 64 if channels >= 64 else max(16, 1 << (channels - 1).bit_length())


if triton is not None:

    @triton.jit
    def _shifted_tile(base, row, col, offs_c, s_n, H, W, valid, c_mask, di: tl.constexpr, dj: tl.constexpr):
        # the (positions, channels) tile of the grid shifted by (di, dj), zero outside the grid
        r = row + di
        cc = col + dj
        ok = valid & (r >= 0) & (r < H) & (cc >= 0) & (cc < W)
        ptrs = base + (r * W + cc)[:, None] * s_n + offs_c[None, :]
        return tl.load(ptrs, mask=ok[:, None] & c_mask[None, :], other=0.0).to(tl.float32)

    @triton.jit
    def _local_conv_fwd_kernel(
            x_ptr, w_ptr, bias_ptr, res_ptr, out_ptr,
            C, H, W, P,
            sx_b, sx_n, sw_b, sw_c, sw_i, sw_j, sr_b, sr_n, so_b, so_n,
            K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, PREFIX: tl.constexpr,
            BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        bi = tl.program_id(0)
        pid_p = tl.program_id(1)
        offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
        c_mask = offs_c < C
        valid = offs_p < H * W
        row = offs_p // W
        col = offs_p % W
        x_base = x_ptr + bi * sx_b + P * sx_n
        w_base = w_ptr + bi * sw_b + offs_c * sw_c
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        for i in tl.static_range(K):
            for j in tl.static_range(K):
                tap = tl.load(w_base + i * sw_i + j * sw_j, mask=c_mask, other=0.0).to(tl.float32)
                acc += _shifted_tile(x_base, row, col, offs_c, sx_n, H, W, valid, c_mask, i - K // 2, j - K // 2) \
                    * tap[None, :]
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_c, mask=c_mask, other=0.0).to(tl.float32)[None, :]
        tile_mask = valid[:, None] & c_mask[None, :]
        if HAS_RESIDUAL:
            res = tl.load(res_ptr + bi * sr_b + (P + offs_p)[:, None] * sr_n + offs_c[None, :], mask=tile_mask,
                          other=0.0)
            acc += res.to(tl.float32)
        tl.store(out_ptr + bi * so_b + (P + offs_p)[:, None] * so_n + offs_c[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=tile_mask)
        if pid_p == 0:  # the prefix tokens have no place on the grid
            for t in range(P):
                if PREFIX == 1:
                    val = tl.load(x_ptr + bi * sx_b + t * sx_n + offs_c, mask=c_mask, other=0.0)
                elif PREFIX == 2:
                    val = tl.load(res_ptr + bi * sr_b + t * sr_n + offs_c, mask=c_mask, other=0.0)
                else:
                    val = tl.zeros((BLOCK_C,), dtype=tl.float32)
                tl.store(out_ptr + bi * so_b + t * so_n + offs_c, val.to(out_ptr.dtype.element_ty), mask=c_mask)

    @triton.jit
    def _local_conv_dw_kernel(
            x_ptr, g_ptr, part_ptr,
            C, H, W, P, NUM_TILES,
            sx_b, sx_n, sg_b, sg_n,
            K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        # partial dw of one (image, tile of positions): part[b, tile, i * K + j, c] = sum_p g[p, c] x[p + (i, j), c]
        bi = tl.program_id(0)
        pid_p = tl.program_id(1)
        offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
        c_mask = offs_c < C
        valid = offs_p < H * W
        row = offs_p // W
        col = offs_p % W
        g = tl.load(g_ptr + bi * sg_b + (P + offs_p)[:, None] * sg_n + offs_c[None, :],
                    mask=valid[:, None] & c_mask[None, :], other=0.0).to(tl.float32)
        x_base = x_ptr + bi * sx_b + P * sx_n
        part_base = part_ptr + ((bi * NUM_TILES + pid_p) * K * K) * C + offs_c
        for i in tl.static_range(K):
            for j in tl.static_range(K):
                xs = _shifted_tile(x_base, row, col, offs_c, sx_n, H, W, valid, c_mask, i - K // 2, j - K // 2)
                tl.store(part_base + (i * K + j) * C, tl.sum(xs * g, axis=0), mask=c_mask)

    def _local_conv_fwd(
            x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None,
            grid_h: int, grid_w: int, num_prefix_tokens: int, prefix_mode: int, out_dtype: torch.dtype,
            direct_launch: bool = False,
    ) -> torch.Tensor:
        b, n, c = x.shape
        out = torch.empty((b, n, c), dtype=out_dtype, device=x.device)
        block_c = _block_c(c)
        grid = (b, cdiv(grid_h * grid_w, _BLOCK_P), cdiv(c, block_c))
        res = residual if residual is not None else x
        sw = weight.stride()
        launcher(_local_conv_fwd_kernel, direct_launch)[grid](
            x, weight, bias if bias is not None else x, res, out,
            c, grid_h, grid_w, num_prefix_tokens,
            x.stride(0), x.stride(1), sw[0] if weight.shape[0] > 1 else 0, sw[1], sw[2], sw[3],
            res.stride(0), res.stride(1), out.stride(0), out.stride(1),
            K=weight.shape[-1], HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None, PREFIX=prefix_mode,
            BLOCK_P=_BLOCK_P, BLOCK_C=block_c, num_warps=4,
        )
        return out

    def _local_conv_dw(
            x: torch.Tensor, grad: torch.Tensor, grid_h: int, grid_w: int, num_prefix_tokens: int, kernel_size: int,
            direct_launch: bool = False,
    ) -> torch.Tensor:
        """Per-(image, tile) partial sums of dw, (B, tiles, K * K, C) in fp32."""
        b, _, c = x.shape
        tiles = cdiv(grid_h * grid_w, _BLOCK_P)
        block_c = _block_c(c)
        part = torch.empty((b, tiles, kernel_size * kernel_size, c), dtype=torch.float32, device=x.device)
        launcher(_local_conv_dw_kernel, direct_launch)[(b, tiles, cdiv(c, block_c))](
            x, grad, part, c, grid_h, grid_w, num_prefix_tokens, tiles,
            x.stride(0), x.stride(1), grad.stride(0), grad.stride(1),
            K=kernel_size, BLOCK_P=_BLOCK_P, BLOCK_C=block_c, num_warps=4,
        )
        return part

    _local_conv_fwd_op = torch.library.triton_op("vitzoo::local_conv_fwd", _local_conv_fwd, mutates_args=())
    _local_conv_dw_op = torch.library.triton_op("vitzoo::local_conv_dw", _local_conv_dw, mutates_args=())

    class _LocalConvFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias, residual, grid_h, grid_w, num_prefix_tokens):
            compiling = torch.compiler.is_compiling()
            out_dtype = residual.dtype if residual is not None else x.dtype
            prefix = _PREFIX_FROM_RESIDUAL if residual is not None else _PREFIX_FROM_X
            out = (_local_conv_fwd_op if compiling else _local_conv_fwd)(
                x, weight, bias, residual, grid_h, grid_w, num_prefix_tokens, prefix, out_dtype,
                direct_launch=not compiling,
            )
            ctx.save_for_backward(x, weight)
            ctx.options = (grid_h, grid_w, num_prefix_tokens, bias is not None, residual is not None,
                           None if bias is None else bias.dtype)
            return out

        @staticmethod
        def backward(ctx, grad):
            x, weight = ctx.saved_tensors
            grid_h, grid_w, prefix, has_bias, has_residual, bias_dtype = ctx.options
            compiling = torch.compiler.is_compiling()
            if grad.stride(-1) != 1:
                grad = grad.contiguous()
            dx = dw = dbias = None
            if ctx.needs_input_grad[0]:
                # the transposed convolution is the convolution with the flipped kernel; the prefix tokens' gradient
                # passes through where they were copied from x, and is zero where the residual supplied them
                dx = (_local_conv_fwd_op if compiling else _local_conv_fwd)(
                    grad, weight.flip(-2, -1), None, None, grid_h, grid_w, prefix,
                    _PREFIX_ZERO if has_residual else _PREFIX_FROM_X, x.dtype, direct_launch=not compiling,
                )
            if ctx.needs_input_grad[1]:
                k = weight.shape[-1]
                part = (_local_conv_dw_op if compiling else _local_conv_dw)(
                    x, grad, grid_h, grid_w, prefix, k, direct_launch=not compiling,
                )
                per_image = part.sum(dim=1) if weight.shape[0] > 1 else part.sum(dim=(0, 1)).unsqueeze(0)
                dw = per_image.view(weight.shape[0], k, k, -1).permute(0, 3, 1, 2).to(weight.dtype)
            if has_bias and ctx.needs_input_grad[2]:
                dbias = grad[:, prefix:].sum(dim=(0, 1), dtype=torch.float32).to(bias_dtype)
            dres = grad if has_residual and ctx.needs_input_grad[3] else None
            return dx, dw, dbias, dres, None, None, None


def local_conv(
        x: torch.Tensor,
        weight: torch.Tensor,
        grid_size: tuple[int, int],
        num_prefix_tokens: int,
        bias: torch.Tensor | None = None,
        residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Depthwise convolution of the patch tokens of ``x``, plus ``bias`` and ``residual``; prefix tokens pass through.

    Args:
        x: (B, N, C) tokens, N = num_prefix_tokens + H * W in row-major grid order; any strides.
        weight: (1, C, K, K) one kernel for the batch (an ``nn.Conv2d(C, C, K, groups=C)`` weight, viewed), or
            (B, C, K, K) one per image; K odd, zero padding K // 2.
        grid_size: the patch grid (H, W).
        num_prefix_tokens: cls / register tokens in front of the patches.
        bias: optional (C,) added to the convolved patches.
        residual: optional (B, N, C) added to every output token; the prefix tokens then come from it, not from x.

    Returns:
        (B, N, C) in the residual's dtype (x's without one); fp32 accumulation.
    """
    tensors = [t for t in (x, weight, bias, residual) if t is not None]
    if kernel_backend(x.device) == "triton" and all(t.dtype != torch.float64 for t in tensors):
        _check_inputs(x, weight, grid_size, num_prefix_tokens, bias, residual)
        if x.stride(-1) != 1:
            x = x.contiguous()
        if residual is not None and residual.stride(-1) != 1:
            residual = residual.contiguous()
        return _LocalConvFunction.apply(x, weight, bias, residual, int(grid_size[0]), int(grid_size[1]),
                                        int(num_prefix_tokens))
    return local_conv_reference(x, weight, grid_size, num_prefix_tokens, bias, residual)
