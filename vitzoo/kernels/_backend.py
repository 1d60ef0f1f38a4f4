"""Which implementation of an op runs: Triton on CUDA, the PyTorch reference elsewhere.

``VITZOO_KERNELS=reference`` forces the reference everywhere; ``VITZOO_KERNELS=triton`` forces Triton (on CPU
that needs ``TRITON_INTERPRET=1``, which is how the CPU tests exercise the kernels).
"""
from __future__ import annotations

import functools
import inspect
import os
from typing import Any

import torch

_CHOICES = ("auto", "reference", "triton")


try:
    import triton  # noqa: F401

    _TRITON = True
except ImportError:
    _TRITON = False


def triton_available() -> bool:
    """Whether triton imports (decided once, at import: a cached call inside a compiled region makes dynamo warn)."""
    return _TRITON


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Launch arithmetic in plain Python integers: triton.cdiv / next_power_of_2 go through triton.language's constexpr
# unwrapping, about 10 us a call on the host, and every kernel launch needs several of them.
def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def multiprocessor_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device: how many programs fill it (the launch heuristics' unit)."""
    return _multiprocessor_count(torch.cuda.current_device() if device.index is None else device.index)


@functools.cache
def _multiprocessor_count(index: int) -> int:
    # cached: the device-properties query costs host time, and the heuristics ask on every launch
    return torch.cuda.get_device_properties(index).multi_processor_count


def kernel_backend(device: torch.device | str) -> str:
    """Return ``'triton'`` or ``'reference'`` for tensors on ``device``, honouring ``VITZOO_KERNELS``."""
    choice = os.environ.get("VITZOO_KERNELS", "auto").strip().lower() or "auto"
    if choice not in _CHOICES:
        raise ValueError(f"VITZOO_KERNELS={choice!r} is not one of {_CHOICES}")
    if choice == "reference" or not triton_available():
        return "reference"
    device_type = torch.device(device).type
    if choice == "triton":
        if device_type == "cuda" or (device_type == "cpu" and _interpreting()):
            return "triton"
        raise RuntimeError(
            "VITZOO_KERNELS=triton needs CUDA tensors, or TRITON_INTERPRET=1 set before triton is imported for CPU"
        )
    return "triton" if device_type == "cuda" else "reference"


def _signature_part(value: Any) -> Any:
    # what Triton specialises a launch on: a tensor's dtype, device and 16-byte alignment, an int's value (Triton
    # only distinguishes 1, multiples of 16 and the rest, so this is finer than it needs), bools and None; floats
    # are plain runtime values
    if isinstance(value, torch.Tensor):
        return value.dtype, value.device, value.data_ptr() % 16 == 0
    if isinstance(value, float):
        return float
    return value


class CachedLauncher:
    """Launches a ``@triton.jit`` kernel, handing the arguments straight to the compiled kernel after the first call.

    ``kernel[grid](*args, **kwargs)`` binds and specialises every argument and hashes a cache key on each launch; with
    the 40-60 arguments of the zoo's kernels that is most of an op's host time in eager mode. Here the first launch
    of each argument signature (see ``_signature_part``) goes through Triton, which compiles if needed and returns
    its compiled kernel; later launches with the same signature call that compiled kernel directly. Under the Triton
    interpreter nothing is compiled and every launch takes Triton's own path.
    """

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        parameters = inspect.signature(kernel.fn).parameters
        self.names = list(parameters)
        self.defaults = {n: p.default for n, p in parameters.items() if p.default is not inspect.Parameter.empty}
        self.compiled: dict[tuple, Any] = {}

    def __getitem__(self, grid: tuple[int, ...]):
        return functools.partial(self.launch, grid)

    def launch(self, grid: tuple[int, ...], *args: Any, **kwargs: Any) -> None:
        key = (tuple(map(_signature_part, args)), tuple((k, _signature_part(v)) for k, v in kwargs.items()))
        compiled = self.compiled.get(key)
        if compiled is None:
            compiled = self.kernel[grid](*args, **kwargs)
            if compiled is not None and hasattr(compiled, "__getitem__"):
                self.compiled[key] = compiled
            return
        # the compiled kernel takes every parameter in signature order, constexprs included; the launch options
        # (num_warps, ...) are part of it already
        values = [*args, *(kwargs[n] if n in kwargs else self.defaults[n] for n in self.names[len(args):])]
        compiled[(*grid, 1, 1)[:3]](*values)  # the compiled kernel's runner reads three grid dims


@functools.cache
def cached_launcher(kernel: Any) -> CachedLauncher:
    """The one :class:`CachedLauncher` of ``kernel``."""
    return CachedLauncher(kernel)
