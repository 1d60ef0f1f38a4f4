"""Layer norm and RMS norm over the last dim of ``x``, the specification of the kernels.

    layer norm:  y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias      (biased variance, as F.layer_norm)
    RMS norm:    y = x / sqrt(mean(x^2) + eps) * weight  [* silu(gate), the gated form of DeltaNet's output norm]
    add + layer norm:  s = x + update;  (s, layer norm of s)                 (a block's residual add and next norm)

Statistics and products in fp32 (fp64 for fp64 inputs); the output in ``x``'s dtype, so a bf16 activation stays bf16
while fp32 parameters are applied at full precision (no cast of the parameters to 16 bits).
"""
from __future__ import annotations

import torch

from ..utils import INPUT_DTYPES, check_input_dtypes


def check_inputs(op: str, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                 gate: torch.Tensor | None = None, update: torch.Tensor | None = None) -> None:
    """The contract shared by the reference and the kernels: float tensors (an integer x would be normalised and
    rounded back to integers), parameters of shape (x.shape[-1],), a gate of x's shape."""
    # one test per tensor on the common path (these checks run on every call: host time)
    try:
        valid = (x.dtype in INPUT_DTYPES and (weight is None or weight.dtype in INPUT_DTYPES)
                 and (bias is None or bias.dtype in INPUT_DTYPES) and (gate is None or gate.dtype in INPUT_DTYPES)
                 and (update is None or update.dtype in INPUT_DTYPES))
    except AttributeError:  # something that is not a tensor
        valid = False
    if not valid:
        named = (("x", x), ("update", update), ("weight", weight), ("bias", bias), ("gate", gate))
        for name, t in named:
            if t is not None and not isinstance(t, torch.Tensor):
                raise ValueError(f"{op}: {name} must be a tensor{'' if name == 'x' else ' or None'}, got "
                                 f"{type(t).__name__}")
        check_input_dtypes(op, named)
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"{op}: x must have a non-empty last dim, got shape {tuple(x.shape)}")
    if gate is not None and gate.shape != x.shape:
        raise ValueError(f"{op}: gate must have x's shape {tuple(x.shape)}, got {tuple(gate.shape)}")
    for name, param in (("weight", weight), ("bias", bias)):
        if param is not None and tuple(param.shape) != (x.shape[-1],):
            raise ValueError(f"{op}: {name} must have shape ({x.shape[-1]},) like x's last dim, got "
                             f"{tuple(param.shape)}")


def _normalize(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
               rms: bool, gate: torch.Tensor | None = None) -> torch.Tensor:
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(acc)
    centred = xf if rms else xf - xf.mean(dim=-1, keepdim=True)
    y = centred * torch.rsqrt(centred.square().mean(dim=-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(acc)
    if bias is not None:
        y = y + bias.to(acc)
    if gate is not None:
        y = y * torch.nn.functional.silu(gate.to(acc))
    return y.to(x.dtype)


def add_layer_norm_reference(x: torch.Tensor, update: torch.Tensor, weight: torch.Tensor | None = None,
                             bias: torch.Tensor | None = None, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + update, its layer norm): the sum in PyTorch's promoted dtype, normalised as :func:`layer_norm_reference`
    normalises it."""
    check_inputs("add_layer_norm", x, weight, bias, update=update)
    if update.shape != x.shape:
        raise ValueError(f"add_layer_norm: update must have x's shape {tuple(x.shape)}, got {tuple(update.shape)}")
    total = x + update
    return total, _normalize(total, weight, bias, eps, rms=False)


def layer_norm_reference(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                         eps: float = 1e-5) -> torch.Tensor:
    """Layer norm over the last dim of ``x`` with optional affine ``weight`` and ``bias``; ``x``'s dtype out."""
    check_inputs("layer_norm", x, weight, bias)
    return _normalize(x, weight, bias, eps, rms=False)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6,
                       gate: torch.Tensor | None = None) -> torch.Tensor:
    """RMS norm over the last dim of ``x`` with an optional ``weight``, times silu(``gate``) when given; ``x``'s dtype
    out (one rounding, after the gate)."""
    check_inputs("rms_norm", x, weight, None, gate)
    return _normalize(x, weight, None, eps, rms=True, gate=gate)
