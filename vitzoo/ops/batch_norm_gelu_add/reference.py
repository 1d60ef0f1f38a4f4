"""out = x + GELU((v - mean) / sqrt(var + eps) * weight + bias) over (..., H, D) tensors, with mean, var, weight and
bias per channel of the last dim D (one BatchNorm shared by the H heads, in eval mode) and GELU the exact (erf) form.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..utils import check_input_dtypes


def check_inputs(x: torch.Tensor, v: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
                 weight: torch.Tensor | None, bias: torch.Tensor | None) -> None:
    """The contract shared by the reference and the kernel."""
    if x.shape != v.shape or x.dim() < 2:
        raise ValueError(f"batch_norm_gelu_add: x and v must have one shape (..., H, D), got {tuple(x.shape)} and "
                         f"{tuple(v.shape)}")
    channels = x.shape[-1]
    vectors = (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias))
    for name, t in vectors:
        if t is not None and tuple(t.shape) != (channels,):
            raise ValueError(f"batch_norm_gelu_add: {name} must be ({channels},) for the last dim, got "
                             f"{tuple(t.shape)}")
    check_input_dtypes("batch_norm_gelu_add", (("x", x), ("v", v), *vectors))


def batch_norm_gelu_add_reference(x: torch.Tensor, v: torch.Tensor, running_mean: torch.Tensor,
                                  running_var: torch.Tensor, weight: torch.Tensor | None = None,
                                  bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """x + GELU(BatchNorm(v)) in x's dtype, computed in fp32 (fp64 for fp64 inputs)."""
    check_inputs(x, v, running_mean, running_var, weight, bias)
    acc = torch.promote_types(torch.promote_types(x.dtype, v.dtype), torch.float32)
    scale = running_var.to(acc).add(eps).rsqrt()
    if weight is not None:
        scale = scale * weight.to(acc)
    normed = (v.to(acc) - running_mean.to(acc)) * scale
    if bias is not None:
        normed = normed + bias.to(acc)
    return (x.to(acc) + F.gelu(normed)).to(x.dtype)
