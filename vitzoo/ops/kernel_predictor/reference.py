"""InLine's local-kernel predictor: per image the token mean of x, a grouped 1x1 layer, the exact GELU and a second
grouped 1x1 layer, read out as one depthwise k x k kernel per channel:

    m     = mean_t x[b, t]                                     (C,)
    h_g   = W1_g m_g + b1_g                                    per group g of C / G channels
    y_g   = W2_g GELU(h_g) + b2_g                              (C / G * k^2,) per group
    K[b, c, i, j] = y_g[(c - g C / G) * k^2 + i k + j]         c in group g

with W1 (C, C / G, 1), W2 (C k^2, C / G, 1) grouped ``Conv1d`` weights. The kernels come as a (B, C, k, k) view of a
(B, k, k, C) tensor (channels-last: the layout the local convolution reads), in the weights' dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..utils import check_input_dtypes


def check_inputs(x: torch.Tensor, weight1: torch.Tensor, bias1: torch.Tensor, weight2: torch.Tensor,
                 bias2: torch.Tensor, groups: int, kernel_size: int) -> None:
    """The contract shared by the reference and the kernels."""
    if x.dim() != 3:
        raise ValueError(f"predict_local_kernels expects x of shape (B, N, C), got {tuple(x.shape)}")
    c = x.shape[-1]
    if groups < 1 or c % groups:
        raise ValueError(f"predict_local_kernels: groups={groups} must divide the {c} channels")
    width = c // groups
    taps = kernel_size * kernel_size
    expected = {"weight1": (c, width, 1), "bias1": (c,), "weight2": (c * taps, width, 1), "bias2": (c * taps,)}
    for name, t in (("weight1", weight1), ("bias1", bias1), ("weight2", weight2), ("bias2", bias2)):
        if tuple(t.shape) != expected[name]:
            raise ValueError(f"predict_local_kernels: {name} must be {expected[name]}, got {tuple(t.shape)}")
    check_input_dtypes("predict_local_kernels", (("x", x), ("weight1", weight1), ("bias1", bias1),
                                                 ("weight2", weight2), ("bias2", bias2)))


def predict_local_kernels_reference(x: torch.Tensor, weight1: torch.Tensor, bias1: torch.Tensor,
                                    weight2: torch.Tensor, bias2: torch.Tensor, groups: int,
                                    kernel_size: int) -> torch.Tensor:
    """(B, C, k, k) kernels in the weights' dtype, channels-last (see the module docstring)."""
    check_inputs(x, weight1, bias1, weight2, bias2, groups, kernel_size)
    b, _, c = x.shape
    dtype = weight1.dtype
    mean = x.mean(dim=1, dtype=dtype).view(b, groups, c // groups).transpose(0, 1)  # (G, B, C / G)
    w1 = weight1.view(groups, c // groups, -1).transpose(1, 2)  # (G, C / G in, C / G out)
    hidden = F.gelu(torch.baddbmm(bias1.view(groups, 1, -1), mean, w1))
    w2 = weight2.view(groups, -1, c // groups).transpose(1, 2)  # (G, C / G, C / G k^2)
    out = torch.baddbmm(bias2.view(groups, 1, -1), hidden, w2)  # (G, B, C / G k^2)
    taps = kernel_size * kernel_size
    tap_major = out.view(groups, b, c // groups, taps).permute(1, 3, 0, 2).reshape(b, kernel_size, kernel_size, c)
    return tap_major.permute(0, 3, 1, 2)
