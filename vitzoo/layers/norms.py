"""Norms that keep a 16-bit activation in its dtype under autocast (the backbone's LayerNorm, the mixers' head
norms)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from ..ops import add_layer_norm as fused_add_layer_norm
from ..ops import layer_norm as fused_layer_norm
from ..ops import rms_norm as fused_rms_norm
from ..ops.layer_norm import takes_kernel


def _takes_norm_kernel(x: torch.Tensor, normalized_shape: tuple[int, ...], *params: torch.Tensor | None) -> bool:
    # the kernels normalise the last dim; where the op would fall back to its reference (float64, the CPU), PyTorch's
    # own norms run instead
    return len(normalized_shape) == 1 and takes_kernel(x, params)


def low_precision_layer_norm(
        x: torch.Tensor, normalized_shape: tuple[int, ...], weight: torch.Tensor | None, bias: torch.Tensor | None,
        eps: float,
) -> torch.Tensor:
    """``F.layer_norm`` that keeps a 16-bit input in its dtype under autocast (the kernel accumulates in fp32).

    Autocast runs layer_norm in fp32: a bf16 activation is then cast up, normalised in fp32 and cast back down by the
    next Linear, three passes over it where one does; only the output's rounding differs, and the next Linear rounds
    it to 16 bits anyway. Outside autocast, or for fp32 / fp64 inputs, this is ``F.layer_norm``.

    With the Triton backend (CUDA) a norm over the last dim runs as one kernel (:func:`vitzoo.ops.layer_norm`) that
    reads the parameters in their own dtype: no casts, and several rows per program, where PyTorch's kernel leaves
    most of a thread block idle at the zoo's widths (64-192).
    """
    if _takes_norm_kernel(x, normalized_shape, weight, bias):
        return fused_layer_norm(x, weight, bias, eps)
    if x.dtype in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return F.layer_norm(
                x, normalized_shape, None if weight is None else weight.to(x.dtype),
                None if bias is None else bias.to(x.dtype), eps,
            )
    return F.layer_norm(x, normalized_shape, weight, bias, eps)


def low_precision_rms_norm(x: torch.Tensor, normalized_shape: tuple[int, ...], weight: torch.Tensor | None,
                           eps: float, gate: torch.Tensor | None = None) -> torch.Tensor:
    """``F.rms_norm`` that keeps a 16-bit input in its dtype under autocast, as :func:`low_precision_layer_norm` (one
    kernel with the Triton backend); with ``gate`` (x's shape) the output is multiplied by silu(gate), in the same
    kernel."""
    if _takes_norm_kernel(x, normalized_shape, weight, gate):
        return fused_rms_norm(x, weight, eps, gate)
    if x.dtype in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            out = F.rms_norm(x, normalized_shape, None if weight is None else weight.to(x.dtype), eps)
        gate = None if gate is None else gate.to(x.dtype)
    else:
        out = F.rms_norm(x, normalized_shape, weight, eps)
    return out if gate is None else out * F.silu(gate)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (same parameters and state_dict) through :func:`low_precision_layer_norm`.

    ``norm(x, update)`` returns ``(x + update, norm(x + update))``: a block's residual add and the norm that reads its
    result, in one kernel with the Triton backend (:func:`vitzoo.ops.add_layer_norm`; ``update`` of x's shape and
    dtype), else the add followed by this norm.
    """

    def forward(self, x: torch.Tensor, update: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if update is None:
            return low_precision_layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        if update.dtype == x.dtype and update.shape == x.shape and \
                _takes_norm_kernel(x, self.normalized_shape, self.weight, self.bias, update):
            return fused_add_layer_norm(x, update, self.weight, self.bias, self.eps)
        total = x + update
        return total, low_precision_layer_norm(total, self.normalized_shape, self.weight, self.bias, self.eps)


# dtype and autocast checks are data-dependent for FX: a leaf for timm's feature extraction
register_notrace_module(LayerNorm)
