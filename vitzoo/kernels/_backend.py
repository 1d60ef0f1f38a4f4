"""Which implementation of an op runs: Triton on CUDA, the PyTorch reference elsewhere.

``VITZOO_KERNELS=reference`` forces the reference everywhere; ``VITZOO_KERNELS=triton`` forces Triton (on CPU
that needs ``TRITON_INTERPRET=1``, which is how the CPU tests exercise the kernels).
"""
from __future__ import annotations

import functools
import os

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

