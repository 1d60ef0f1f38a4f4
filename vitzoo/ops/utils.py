"""What every op shares: which implementation runs (backend selection), launch arithmetic and the input checks.

Backend selection: Triton on CUDA, the PyTorch reference elsewhere.

The choice is one of ``'auto'`` (Triton for CUDA tensors, the reference for the rest), ``'reference'`` (the
reference everywhere) or ``'triton'`` (Triton everywhere; on CPU that needs ``TRITON_INTERPRET=1``, which is how the
CPU tests exercise the kernels). It starts from the environment variable ``VITZOO_KERNELS``, read once when this
module is imported, and changes with :func:`set_backend` or, for a block, :func:`use_backend`. The ops look it up
on every call in a module global: no environment read, and nothing that makes ``torch.compile`` warn.
"""
from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterable, Iterator

import torch

_CHOICES = ("auto", "reference", "triton")
INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # what the references accept
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # what the kernels accept (they accumulate in fp32)
MAX_HEAD_DIM = 128  # the largest head dim the attention kernels hold on chip


try:
    import triton  # noqa: F401

    _TRITON = True
except ImportError:
    _TRITON = False


def triton_available() -> bool:
    """Whether triton imports (decided once, at import: a cached call inside a compiled region makes dynamo warn)."""
    return _TRITON


# triton itself reads the variable once, at import
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def interpreting() -> bool:
    """Whether Triton kernels run in the Triton interpreter (TRITON_INTERPRET=1 when triton was imported)."""
    return _INTERPRET


def _parse(choice: str) -> str:
    choice = choice.strip().lower() or "auto"
    if choice not in _CHOICES:
        raise ValueError(f"kernel backend {choice!r} is not one of {_CHOICES}")
    return choice


_backend = _parse(os.environ.get("VITZOO_KERNELS", "auto"))


def get_backend() -> str:
    """The backend choice in force: ``'auto'``, ``'reference'`` or ``'triton'``."""
    return _backend


def set_backend(choice: str) -> str:
    """Make ``choice`` (``'auto'``, ``'reference'`` or ``'triton'``) the backend of every later op call; returns the
    previous choice."""
    global _backend
    previous, _backend = _backend, _parse(choice)
    return previous


@contextlib.contextmanager
def use_backend(choice: str) -> Iterator[None]:
    """Run the ops with backend ``choice`` inside the block, restoring the previous choice after it."""
    previous = set_backend(choice)
    try:
        yield
    finally:
        set_backend(previous)


# Launch arithmetic in plain Python integers: triton.cdiv / next_power_of_2 go through triton.language's constexpr
# unwrapping, about 10 us a call on the host, and every kernel launch needs several of them.
def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def padded(dim: int) -> int:
    """A dim as a tile dim: the next power of two, at least 16 (the tensor cores' smallest K)."""
    return max(16, next_power_of_2(dim))


def cast_to(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype``: ``t`` itself when it already is (a no-op ``.to()`` still costs a dispatch of host time,
    which the eager forwards pay on every call)."""
    return t if t.dtype == dtype else t.to(dtype)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` (on the host) on ``device``; to a CUDA device from pinned memory without blocking, as a copy from
    pageable memory first waits for everything queued on the device."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def token_chunks(sequences: int, n: int, block: int, device: torch.device, *, split_below: float,
                 programs_per_sm: int, interpreter_programs: int, max_chunks: int | None = None, min_blocks: int = 0,
                 blocks_per_chunk: int = 1) -> tuple[int, int]:
    """(number of chunks, tokens per chunk) for a kernel that gives each of ``sequences`` sequences of ``n`` tokens a
    program: one chunk of every token while the sequences give each multiprocessor ``split_below`` programs, or while
    a sequence has fewer than ``min_blocks`` blocks of ``block`` tokens (a walk that short costs less than the launches
    a split adds, on the host of an eager call above all); otherwise chunks of whole blocks, at least
    ``blocks_per_chunk`` each, for about ``programs_per_sm`` programs per multiprocessor, at most ``max_chunks``.
    Under the Triton interpreter the GPU counts ``interpreter_programs`` programs (what the CPU tests split for)."""
    if cdiv(n, block) < min_blocks:
        return 1, n
    if device.type == "cuda":
        sms = multiprocessor_count(device)
        if sequences >= split_below * sms:
            return 1, n
        programs = programs_per_sm * sms
    else:
        programs = interpreter_programs
    chunks = min(cdiv(programs, sequences), cdiv(n, blocks_per_chunk * block))
    if max_chunks is not None:
        chunks = min(chunks, max_chunks)
    if chunks <= 1:
        return 1, n
    chunk = cdiv(cdiv(n, chunks), block) * block
    return cdiv(n, chunk), chunk


def multiprocessor_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device: how many programs fill it (the launch heuristics' unit)."""
    return _multiprocessor_count(torch.cuda.current_device() if device.index is None else device.index)


@functools.cache
def _multiprocessor_count(index: int) -> int:
    # cached: the device-properties query costs host time, and the heuristics ask on every launch
    return torch.cuda.get_device_properties(index).multi_processor_count


def kernel_backend(device: torch.device | str) -> str:
    """Return ``'triton'`` or ``'reference'`` for tensors on ``device`` under the current choice."""
    choice = _backend
    if choice == "reference" or not triton_available():
        return "reference"
    device_type = torch.device(device).type
    if choice == "triton":
        if device_type == "cuda" or (device_type == "cpu" and interpreting()):
            return "triton"
        raise RuntimeError(
            "the 'triton' kernel backend needs CUDA tensors, or TRITON_INTERPRET=1 set before triton is imported "
            "for CPU"
        )
    return "triton" if device_type == "cuda" else "reference"


def check_qkv(op: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """The input contract of the attention-like ops: q, k (B, N, H, Dk) and v (B, N, H, Dv) in a float dtype."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"{op} expects q, k, v of shape (B, N, H, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape != k.shape:
        raise ValueError(f"{op}: q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"{op}: v must share (B, N, H) with q; got v {tuple(v.shape)} and q {tuple(q.shape)}")
    check_input_dtypes(op, (("q", q), ("k", k), ("v", v)))


def check_input_dtypes(op: str, named: Iterable[tuple[str, torch.Tensor | None]]) -> None:
    """Raise ``ValueError`` naming the first of the (name, tensor) pairs (None skipped) whose dtype the references do
    not take."""
    for name, t in named:
        if t is not None and t.dtype not in INPUT_DTYPES:
            raise ValueError(f"{op}: {name} has dtype {t.dtype}; use float16, bfloat16, float32 or float64")


def check_kernel_qkv(op: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """What the attention kernels need beyond :func:`check_qkv`: a kernel dtype, one device, B, N, H >= 1 and head
    dims up to :data:`MAX_HEAD_DIM`."""
    for t in (q, k, v):
        if t.dtype not in KERNEL_DTYPES:
            raise ValueError(f"{op}: inputs must be float16, bfloat16 or float32, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{op}: all inputs must be on {q.device}, got one on {t.device}")
    if min(q.shape[:3]) < 1:
        raise ValueError(f"{op}: B, N and H must be >= 1, got q of shape {tuple(q.shape)}")
    for name, dim in (("Dk", q.shape[-1]), ("Dv", v.shape[-1])):
        if not 1 <= dim <= MAX_HEAD_DIM:
            raise ValueError(f"{op}: head dim {name}={dim} must be in 1..{MAX_HEAD_DIM}")
