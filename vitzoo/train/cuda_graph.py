"""A model's training forward and backward replayed from CUDA graphs.

Eager PyTorch spends host time on every kernel launch: a tiny ViT's training step issues about a thousand of them
(several thousand for H3 and FEM), and enqueueing them takes longer than the GPU takes to run them, so the step's
speed follows the CPU. :func:`graphed_training_forward` captures the model's forward and backward once, for one
input shape, with ``torch.cuda.make_graphed_callables``; each step then enqueues two graph launches, and only the
loss, the optimizer, gradient clipping and the EMA (a few dozen launches) stay eager.

What a graph fixes at capture: the input shape and dtype (the training loader drops its last partial batch), the
mixed-precision dtype, the training-mode behaviour (dropout and drop path still draw fresh numbers each replay) and
the parameters' storage (optimizers update them in place, so the graph reads the current values).

The replayed backward hands each parameter its gradient in a buffer of the graph's own, which the next replay
overwrites; a parameter without a ``.grad`` keeps the buffer itself as its ``.grad``. That is harmless when every
backward is followed by the optimizer step and ``zero_grad(set_to_none=True)``, but with gradient accumulation the
second backward would overwrite the first one's gradient before adding itself to it; :func:`own_gradients` makes
every parameter take a copy instead (``accumulates=True``).

PyTorch warns once per run that "the AccumulateGrad node's stream does not match": the parameters' gradient
accumulators are made during the capture, on its side stream, and each replayed backward syncs with that stream
before accumulating. Making them on the training stream before the capture silences it but makes the capture fail
(the legacy stream cannot depend on a capturing one; seen on an H100), so the warning stays.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn


class TrainingForward(nn.Module):
    """``model(x)`` under autocast to ``dtype`` (None: no autocast) with fp32 logits, as the eager loop computes it;
    what :func:`graphed_training_forward` captures, and the benchmarks' eager training forward."""

    def __init__(self, model: nn.Module, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dtype is None:
            return self.model(x).float()
        # autocast's weight-cast cache must not outlive the captured region (make_graphed_callables insists)
        with torch.autocast(x.device.type, dtype=self.dtype, cache_enabled=False):
            return self.model(x).float()


def own_gradients(model: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
    """Make every trainable parameter of ``model`` take a copy of each gradient a backward hands it (a hook per
    parameter, one copy per parameter and backward), so a gradient buffer that its producer reuses never becomes the
    parameter's ``.grad``. Returns the hooks' handles."""
    return [param.register_hook(torch.Tensor.clone) for param in model.parameters() if param.requires_grad]


def graphed_training_forward(model: nn.Module, example: torch.Tensor, dtype: torch.dtype | None,
                             accumulates: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return a callable equal to ``model(x).float()`` under ``dtype`` autocast, for ``x`` shaped like ``example``,
    whose forward and backward replay CUDA graphs captured here (``model`` itself is left as it was: evaluation and
    checkpoints use it directly). ``accumulates``: several backwards add up in ``.grad`` before each optimizer step
    (gradient accumulation), so the parameters copy the replayed gradients (:func:`own_gradients`).

    The capture runs the model a few times on ``example`` first (kernel selection and autotuning stay out of the
    graphs); the model's buffers (BatchNorm statistics) and the RNG states are restored afterwards, so a run that
    graphs its steps draws the same numbers, whether or not it resumed.

    Raises:
        ValueError: ``example`` is not on a CUDA device, or ``model`` is not in training mode.
    """
    if example.device.type != "cuda":
        raise ValueError(f"CUDA graphs need a CUDA device; the example input is on {example.device}")
    if not model.training:
        raise ValueError("graphed_training_forward captures the training-mode forward; call model.train() first")
    buffers = [buffer.detach().clone() for buffer in model.buffers()]
    cpu_rng, cuda_rng = torch.get_rng_state(), torch.cuda.get_rng_state(example.device)
    forward = TrainingForward(model, dtype).train()
    # allow_unused_input: a parameter that the forward does not reach (e.g. a classifier replaced by the caller)
    # simply gets no gradient, as in eager
    graphed = torch.cuda.make_graphed_callables(forward, (example,), allow_unused_input=True)
    with torch.no_grad():
        for buffer, saved in zip(model.buffers(), buffers, strict=True):
            buffer.copy_(saved)
    torch.set_rng_state(cpu_rng)
    torch.cuda.set_rng_state(cuda_rng, example.device)
    if accumulates:  # after the capture: the copies are not part of the graphs
        own_gradients(model)
    return graphed
