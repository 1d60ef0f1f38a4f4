"""out = x + GELU(v * scale + shift), with GELU the exact (erf) form and scale, shift per channel of the last dim.

An eval-mode BatchNorm over the last dim is such an affine map (scale = weight / sqrt(running_var + eps),
shift = bias - running_mean * scale): QT-ViT's shortcut GELU(BN(v)), added to the attention output, is this op.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..utils import INPUT_DTYPES


def check_inputs(x: torch.Tensor, v: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """The contract shared by the reference and the kernel."""
    if x.shape != v.shape or x.dim() < 1:
        raise ValueError(f"affine_gelu_add: x and v must have one shape, got {tuple(x.shape)} and {tuple(v.shape)}")
    channels = x.shape[-1]
    if tuple(scale.shape) != (channels,) or tuple(shift.shape) != (channels,):
        raise ValueError(f"affine_gelu_add: scale and shift must be ({channels},) for the last dim, got "
                         f"{tuple(scale.shape)} and {tuple(shift.shape)}")
    for name, t in (("x", x), ("v", v), ("scale", scale), ("shift", shift)):
        if t.dtype not in INPUT_DTYPES:
            raise ValueError(f"affine_gelu_add: {name} has dtype {t.dtype}; use float16, bfloat16, float32 or float64")


def affine_gelu_add_reference(x: torch.Tensor, v: torch.Tensor, scale: torch.Tensor,
                              shift: torch.Tensor) -> torch.Tensor:
    """x + GELU(v * scale + shift) in x's dtype, computed in fp32 (fp64 for fp64 inputs)."""
    check_inputs(x, v, scale, shift)
    acc = torch.promote_types(torch.promote_types(x.dtype, v.dtype), torch.float32)
    pre = torch.addcmul(shift.to(acc), v.to(acc), scale.to(acc))
    return (x.to(acc) + F.gelu(pre)).to(x.dtype)
