"""Counting what a block of code dispatches (a test helper)."""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class OpRecorder(TorchDispatchMode):
    """Records the name of every aten op dispatched inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


class CastCounter(TorchDispatchMode):
    """Counts the dtype casts dispatched inside the block (``aten.to`` in inference mode, ``aten._to_copy`` outside
    it)."""

    def __init__(self) -> None:
        super().__init__()
        self.casts = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.to, torch.ops.aten._to_copy):
            self.casts += 1
        return func(*args, **(kwargs or {}))
