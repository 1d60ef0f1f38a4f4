"""Depthwise K x K convolution over the patch grid of a (B, N, C) token sequence, fused with what surrounds it.

With P prefix (cls / register) tokens and an H x W patch grid (N = P + H * W), per channel c:

    out[b, P + p, c] = residual[b, P + p, c] + bias[c] + sum_{i,j} w[b, c, i, j] x[b, P + p + (i - K//2, j - K//2), c]
    out[b, t, c]     = residual[b, t, c] if a residual is given, else x[b, t, c]          (prefix tokens, t < P)

then, with ``activation='silu'`` (no residual; DeltaNet's conv), out <- silu(out) on every token, prefix included.

where the grid offset is zero-padded at the borders (``F.conv2d`` with padding K // 2). ``w`` is one kernel for the
whole batch (B_w = 1: DeltaNet's and H3's short convolutions, an ``nn.Conv2d`` weight) or one per image (B_w = B:
InLine's predicted local residual). The mixers used to move the tokens to an NCHW grid, convolve, move them back
and concatenate the prefix: four passes over the activations and, for per-image kernels, PyTorch's slow
``groups = B * C`` path. The Triton kernel reads the tokens where they are (any strides, unit stride on C, e.g. a
view of a fused qkv projection) and writes the final tokens in one pass, accumulating in fp32.

The backward is the same kernel on the gradient with the kernel flipped (dx), a per-tile partial-sum kernel for
dw (summed deterministically afterwards, no atomics), and plain reductions for the bias; d residual is the
gradient itself. With the activation, the forward kernel first recomputes the convolution and turns the gradient
into the pre-activation's (nothing but the inputs is saved).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = (None, "silu")


def check_inputs(x: torch.Tensor, weight: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int,
                 bias: torch.Tensor | None, residual: torch.Tensor | None, activation: str | None = None) -> None:
    """The contract shared by the reference and the kernels."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"local_conv: activation={activation!r} is not one of {ACTIVATIONS}")
    if activation is not None and residual is not None:
        raise ValueError("local_conv: an activation applies to the convolution alone; it takes no residual")
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
        activation: str | None = None,
) -> torch.Tensor:
    """Plain PyTorch :func:`local_conv` (same arguments): the specification of the kernel."""
    check_inputs(x, weight, grid_size, num_prefix_tokens, bias, residual, activation)
    b, n, c = x.shape
    h, w = grid_size
    p = num_prefix_tokens
    k = weight.shape[-1]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    out_dtype = residual.dtype if residual is not None else x.dtype
    grid = x[:, p:].to(acc).transpose(1, 2).reshape(1, b * c, h, w)
    kernels = weight.to(acc).expand(b, c, k, k).reshape(b * c, 1, k, k)
    if b == 0:  # a grouped convolution cannot have zero groups
        patches = grid.new_zeros(b, h * w, c)
    else:
        patches = F.conv2d(grid, kernels, padding=k // 2, groups=b * c).reshape(b, c, h * w).transpose(1, 2)
    if bias is not None:
        patches = patches + bias.to(acc)
    source = residual if residual is not None else x
    if residual is not None:
        patches = patches + residual[:, p:].to(acc)
    out = torch.cat([source[:, :p].to(acc), patches], dim=1)
    if activation == "silu":
        out = F.silu(out)
    return out.to(out_dtype)
