"""Values a module computes from its parameters once and keeps between inference forwards, and the rule that says
when a kept value is stale (:func:`kept_value_key`).

Two kinds are kept: H3's SSM kernels and Toeplitz weights (``h3.py``), and the 16-bit copies of the Linear layers'
weights under autocast (:class:`KeptCastLinear`, every Linear of the DeiT-shaped models).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module


def kept_value_key(params: tuple[torch.Tensor, ...], *extra) -> tuple | None:
    """A key under which a value computed from ``params`` (and ``extra``) may be kept between forwards: it changes
    when a parameter changes (its version counter or storage). None when nothing may be kept: a gradient of a
    parameter is being recorded (the value must be part of the graph), under torch.compile or tracing, or for
    inference tensors (no version counter to tell a change).

    In-place edits through ``p.data`` bypass the version counter, and so do fused optimizers (``torch.optim``'s
    ``fused=True`` kernels): the modules that keep values also drop them whenever ``train()`` or ``eval()`` is called,
    as training loops do around each evaluation. Otherwise change parameters in place under ``torch.no_grad()``, as
    foreach optimizers, EMA and ``load_state_dict`` do, or the kept value goes stale.
    """
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return None
    if torch.is_grad_enabled() and any(p.requires_grad for p in params):
        return None
    if any(torch.is_inference(p) for p in params):
        return None
    return (*extra, params[0].device, tuple((p._version, p.data_ptr()) for p in params))


class KeptCastLinear(nn.Linear):
    """``nn.Linear`` (same parameters, init and state_dict) that, in eval mode under autocast, keeps its weight and bias
    cast to the autocast dtype between forwards.

    Autocast casts an fp32 Linear's weight and bias on every forward (a copy kernel each; its own cache lasts one
    ``torch.autocast`` block, and inference code enters one per batch): a tenth of an eager DeiT-T forward's device
    time and a third of its launches, for values that do not change between batches. Here they are cast once and
    kept under :func:`kept_value_key`'s rule; the output is bit-identical to ``nn.Linear``'s under autocast (the same
    rounding of the same values). Only forwards without gradients (``torch.no_grad`` / ``torch.inference_mode``) keep
    them; training mode, gradient mode (a frozen model's input gradients included), torch.compile, tracing and
    CUDA-graph capture (a captured graph must read the fp32 parameters, which later updates change in place) take
    ``nn.Linear``'s path.
    The kept copies cost the 16-bit size of the weights, and are dropped by ``train()`` / ``eval()``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._kept: tuple[tuple, torch.Tensor, torch.Tensor | None] | None = None

    def train(self, mode: bool = True) -> KeptCastLinear:
        self._kept = None  # see kept_value_key: a fused optimizer's updates leave the version counters as they were
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or torch.is_grad_enabled() or not torch.is_autocast_enabled(x.device.type):
            return F.linear(x, self.weight, self.bias)
        dtype = torch.get_autocast_dtype(x.device.type)
        if self.weight.dtype != torch.float32 or (x.is_cuda and torch.cuda.is_current_stream_capturing()):
            return F.linear(x, self.weight, self.bias)
        params = (self.weight,) if self.bias is None else (self.weight, self.bias)
        key = kept_value_key(params, dtype)
        if key is None:
            return F.linear(x, self.weight, self.bias)
        if self._kept is None or self._kept[0] != key:
            with torch.no_grad():
                self._kept = (key, self.weight.to(dtype), None if self.bias is None else self.bias.to(dtype))
        # autocast leaves operands already in its dtype as they are: only x may still be cast
        return F.linear(x, self._kept[1], self._kept[2])


# the forward branches on the grad, autocast and capture modes, which FX would bake in: a leaf for timm's feature
# extraction
register_notrace_module(KeptCastLinear)
