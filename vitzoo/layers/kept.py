"""Values a module computes from its parameters once and keeps between inference forwards, and the rule that says
when a kept value is stale (:func:`kept_value_key`).

:class:`KeepsValue` keeps one such value per module. Four kinds are kept: H3's SSM kernels and Toeplitz lags
(``h3.py``), FEM's inverse temperatures beta_max (``fem.py``), the grid convolution's weight in the layout its kernel
reads (``local_conv.py``), and 16-bit copies of fp32 parameters under autocast (:class:`KeepsAutocastCopies`), used
by :class:`KeptCastLinear` (every Linear of the DeiT-shaped models; :class:`NarrowLinear` for those with a handful of
outputs) and by their patch embedding. The same Linear's path for CUDA-graph-captured training
(:func:`linear_with_product_bias_grad`) lives here too.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

T = TypeVar("T")


def kept_value_key(params: Sequence[torch.Tensor], *extra) -> tuple | None:
    """A key under which a value computed from ``params`` (and ``extra``) may be kept between forwards: it changes
    when a parameter changes (its version counter or storage). None when nothing may be kept: a gradient of a
    parameter is being recorded (the value must be part of the graph), under torch.compile or tracing, while a CUDA
    graph is being captured (a replay must compute the value from the parameters, which later updates change in
    place), or for inference tensors (no version counter to tell a change).

    In-place edits through ``p.data`` bypass the version counter, and so do fused optimizers (``torch.optim``'s
    ``fused=True`` kernels): the modules that keep values also drop them whenever ``train()`` or ``eval()`` is called,
    as training loops do around each evaluation. Otherwise change parameters in place under ``torch.no_grad()``, as
    foreach optimizers, EMA and ``load_state_dict`` do, or the kept value goes stale.
    """
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return None
    if torch.is_grad_enabled() and any(p.requires_grad for p in params):
        return None
    first = params[0]
    if first.is_cuda and torch.cuda.is_current_stream_capturing():
        return None
    # (this runs for every Linear of every inference forward: one pass per attribute, no generator)
    try:
        versions = [p._version for p in params]
    except RuntimeError:  # an inference tensor: no version counter
        return None
    return (*extra, first.device, *versions, *[p.data_ptr() for p in params])


class KeepsValue:
    """Mixin for a module that computes one value from its parameters and keeps it between forwards.

    :meth:`kept` returns the value kept under ``key`` (from :func:`kept_value_key`), computing it again when the key
    changes; a None key keeps nothing. ``train()`` and ``eval()`` drop the value: a fused optimizer's updates leave
    the version counters as they were.
    """

    _kept: tuple[tuple, Any] | None = None

    def train(self, mode: bool = True) -> KeepsValue:
        self._kept = None
        return super().train(mode)

    def kept(self, key: tuple | None, compute: Callable[[], T]) -> T:
        """``compute()``, or the value it gave under the same ``key``."""
        if key is None:
            return compute()
        if self._kept is None or self._kept[0] != key:
            self._kept = (key, compute())
        return self._kept[1]


class KeepsAutocastCopies(KeepsValue):
    """Mixin for a module whose forward multiplies by fp32 parameters under autocast: in eval mode, without gradients,
    :meth:`autocast_copies` gives the parameters cast to the autocast dtype, cast once and kept between forwards.

    Autocast casts such parameters on every forward (a copy kernel each; its own cache lasts one ``torch.autocast``
    block, and inference code enters one per batch). Kept copies follow :func:`kept_value_key`'s rule and give the
    same bits as autocast's own casts. Only forwards without gradients (``torch.no_grad`` / ``torch.inference_mode``)
    keep them; training mode, gradient mode (a frozen model's input gradients included), torch.compile, tracing and
    CUDA-graph capture (a captured graph must read the fp32 parameters, which later updates change in place) get None
    and take the plain path. The copies cost the parameters' 16-bit size and are dropped by ``train()`` / ``eval()``.
    """

    def autocast_copies(self, x: torch.Tensor, *params: torch.Tensor | None) -> tuple[torch.Tensor | None, ...] | None:
        """``params`` (fp32; None entries stay None) in the autocast dtype of ``x``'s device, or None where the plain
        path must run."""
        if self.training or torch.is_grad_enabled() or torch.compiler.is_compiling():
            return None  # (compiling first: kept_value_key's capture query is not for a traced region)
        device_type = x.device.type
        if not torch.is_autocast_enabled(device_type) or params[0].dtype != torch.float32:
            return None
        dtype = torch.get_autocast_dtype(device_type)
        key = kept_value_key([p for p in params if p is not None], dtype)
        if key is None:
            return None

        def cast() -> tuple[torch.Tensor | None, ...]:
            with torch.no_grad():
                return tuple(None if p is None else p.to(dtype) for p in params)

        return self.kept(key, cast)


class _ProductBiasGradLinear(torch.autograd.Function):
    """``F.linear(x, weight, bias)`` whose backward takes the bias gradient as a matrix-vector product of the output
    gradient with ones (cuBLAS, accumulating in fp32) instead of autograd's column-sum reduction, which ran at about a
    tenth of the H200's memory speed on (B * N, C) gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        rows = grad.reshape(-1, grad.shape[-1])
        dx = grad.matmul(weight) if ctx.needs_input_grad[0] else None
        dw = rows.t().mm(x.reshape(-1, x.shape[-1])) if ctx.needs_input_grad[1] else None
        db = torch.mv(rows.t(), rows.new_ones(rows.shape[0])) if ctx.needs_input_grad[2] else None
        return dx, dw, db


def linear_with_product_bias_grad(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, autocast included, with the bias gradient taken as a matrix-vector product
    (:class:`_ProductBiasGradLinear`); same forward bits, the bias gradient summed in another order."""
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        with torch.autocast(x.device.type, enabled=False):
            return _ProductBiasGradLinear.apply(x.to(dtype), weight.to(dtype), bias.to(dtype))
    return _ProductBiasGradLinear.apply(x, weight, bias)


class KeptCastLinear(KeepsAutocastCopies, nn.Linear):
    """``nn.Linear`` (same parameters, init and state_dict) that keeps its weight and bias in the autocast dtype
    between eval-mode forwards without gradients (:class:`KeepsAutocastCopies`): two copy kernels less per layer and
    forward, the same output bits.

    Forwards captured into a CUDA graph that record the bias's gradient take it as a product
    (:func:`linear_with_product_bias_grad`): on an H100 that cut the device time of a DeiT-T training step by 17%
    (11.15 -> 9.26 ms). Eager steps keep autograd's own bias gradient, because they are bound by host time, which the
    Python autograd function raises (the same step's eager host time rose from 45 to 53 ms); under torch.compile the
    compiler plans the backward itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept = self.autocast_copies(x, self.weight, self.bias)
        if kept is not None:
            # autocast leaves operands already in its dtype as they are: only x may still be cast
            return F.linear(x, kept[0], kept[1])
        if self.bias is not None and self.bias.requires_grad and x.is_cuda and torch.is_grad_enabled() \
                and not torch.compiler.is_compiling() and torch.cuda.is_current_stream_capturing():
            return linear_with_product_bias_grad(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


# the forward branches on the grad, autocast and capture modes, which FX would bake in: a leaf for timm's feature
# extraction
register_notrace_module(KeptCastLinear)


class NarrowLinear(KeptCastLinear):
    """:class:`KeptCastLinear` for a handful of outputs (a gate or write strength per head): the product is taken as
    W X^T, (outputs, rows), and returned as its transposed view (..., outputs).

    ``F.linear`` writes (rows, outputs); rows of 3 or 6 16-bit outputs are too narrow for cuBLAS's aligned kernels and
    it falls back to slow ones (on the H200, 25 us a call for DeltaNet-T's 3 outputs at batch 256, 17 us for ZeroS-T's
    6). W X^T writes rows of B * N outputs (``do_bench``: 29 -> 13 us for 3 outputs, 21 -> 13 us for 6). With a bias
    it takes one more launch (ZeroS-T: 176 -> 188 launches per eager forward on an H100).
    The same parameters, state_dict and sums; the callers read the view through its strides."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept = self.autocast_copies(x, self.weight, self.bias)
        weight, bias = kept if kept is not None else (self.weight, self.bias)
        rows = x.reshape(-1, x.shape[-1]).t()
        out = torch.mm(weight, rows) if bias is None else torch.addmm(bias[:, None], weight, rows)
        return out.t().view(*x.shape[:-1], self.out_features)


register_notrace_module(NarrowLinear)
