"""Launch configuration of the linear-attention kernels: tiles, warps, pipeline stages and the split of N.

One fixed configuration per shape class, no autotuning. A pass (the forward, or the backward) runs as one program per
(batch, head) that walks the whole sequence while there are enough (batch, head) pairs to fill the GPU; below that
the sequence is split over several programs (two launches, the states summed with fp32 atomics). The numbers are
from H200 sweeps (``benchmarks/linear_attention.py --sweep``, recorded in ``benchmarks/NOTES.md``).
"""
from __future__ import annotations

import dataclasses
import functools

import torch

from ..utils import cdiv, interpreting, padded, token_chunks

# the "GPU size" the split rule assumes under TRITON_INTERPRET=1 (CPU tests): N is split until about 4 programs run
_INTERPRETER_PROGRAMS = 4


@dataclasses.dataclass(frozen=True)
class LaunchPolicy:
    """The rules a pass is launched by.

    Attributes:
        split_below: split N when B*H is below this many programs per multiprocessor.
        programs_per_sm: how many programs per multiprocessor a split pass aims for.
        tiles: a fixed (BLOCK_N, num_warps, num_stages) in place of the per-shape choice (benchmark variants).
        max_registers: Triton's ``maxnreg`` launch option (registers per thread), or None for the compiler's choice.
    """

    split_below: float
    programs_per_sm: int
    tiles: tuple[int, int, int] | None = None
    max_registers: int | None = None


# H200 sweeps (benchmarks/NOTES.md): the forward's one-program-per-sequence path wins down to 2 programs per SM, the
# backward's only down to 4; split passes do best at 4 programs per SM
FORWARD_POLICY = LaunchPolicy(split_below=2, programs_per_sm=4)
BACKWARD_POLICY = LaunchPolicy(split_below=4, programs_per_sm=4)


@dataclasses.dataclass(frozen=True)
class Launch:
    """The launch of one pass: tile and warp shape, and N divided into ``splits`` chunks of ``chunk`` tokens."""

    block_n: int
    num_warps: int
    num_stages: int
    splits: int
    chunk: int
    max_registers: int | None = None

    def options(self) -> dict[str, int]:
        """The kernel's launch keywords (BLOCK_N and Triton's launch options)."""
        options = dict(BLOCK_N=self.block_n, num_warps=self.num_warps, num_stages=self.num_stages)
        if self.max_registers is not None:
            options["maxnreg"] = self.max_registers
        return options


def state_size(weightings: int, dk: int, dv: int) -> int:
    """fp32 words per (batch, head): W x (S: dk x dv, u: dv, z: dk, s: 1) followed by the key sum (dk).

    One weighting: rounded up to a multiple of 16, so that every (batch, head) starts 64-byte aligned and Triton,
    knowing the row stride divides by 16, reads, writes and atomically adds the states 16 bytes at a time (H200:
    ReLU forward 52.8 vs 55.0 us at N=3137, QT and FEM faster too). Not for ZeroS's three weightings, whose split
    forward was slower with it (171 vs 137 us at N=3137)."""
    words = weightings * (dk * dv + dv + dk + 1) + dk
    return cdiv(words, 16) * 16 if weightings == 1 else words


def _tiles(dk: int, dv: int, weightings: int, backward: bool, split: bool) -> tuple[int, int, int]:
    """(BLOCK_N, num_warps, num_stages) per shape class. ``split``: the pass is divided over several programs."""
    if interpreting():
        return 64, 4, 1
    if padded(dk) * padded(dv) > 64 * 64 or weightings > 1:  # more state per program: smaller tiles, fewer stages
        return (32, 8, 2) if backward else (64, 8, 2)
    # Three stages keep two K/V tiles in flight. Backward (H200 sweep, benchmarks/NOTES.md): 32-token tiles when one
    # program walks a whole sequence, 128-token tiles over 8 warps for the split passes; 64-token tiles over 4 warps
    # gave a wrong dk with Triton 3.6 there.
    if backward:
        return (128, 8, 2) if split else (32, 4, 3)
    return 64, 4, 3


def _splits(bh: int, n: int, block_n: int, device: torch.device, policy: LaunchPolicy) -> tuple[int, int]:
    """(number of N-splits, tokens per split): split only when B*H programs cannot fill the GPU, into whole tiles,
    at least two per split."""
    return token_chunks(bh, n, block_n, device, split_below=policy.split_below,
                        programs_per_sm=policy.programs_per_sm, interpreter_programs=_INTERPRETER_PROGRAMS,
                        blocks_per_chunk=2)


# worked out once per shape (host time per call); every argument is hashable, the results are frozen
@functools.lru_cache(maxsize=1024)
def forward_launch(bh: int, n: int, dk: int, dv: int, weightings: int, device: torch.device,
                   policy: LaunchPolicy = FORWARD_POLICY) -> Launch:
    """The forward's launch for B*H = ``bh`` sequences of ``n`` tokens."""
    block_n, num_warps, num_stages = policy.tiles or _tiles(dk, dv, weightings, backward=False, split=False)
    splits, chunk = _splits(bh, n, block_n, device, policy)
    if policy.tiles is None and num_stages > 2 and cdiv(chunk, block_n) <= 4:
        # passes of at most 4 tiles (ViT-sized sequences) gain nothing from a third buffer, and the smaller
        # footprint lets more programs share an SM (H200, N=197: 1.47x the floor with 2 stages, 1.53x with 3)
        num_stages = 2
    return Launch(block_n, num_warps, num_stages, splits, chunk, policy.max_registers)


@functools.lru_cache(maxsize=1024)
def backward_launch(bh: int, n: int, dk: int, dv: int, weightings: int, device: torch.device,
                    policy: LaunchPolicy = BACKWARD_POLICY) -> Launch:
    """The backward's launch: whether to split is decided with the split passes' tiles, which then differ from the
    one-program tiles."""
    split_tiles = policy.tiles or _tiles(dk, dv, weightings, backward=True, split=True)
    splits, chunk = _splits(bh, n, split_tiles[0], device, policy)
    block_n, num_warps, num_stages = split_tiles if splits > 1 else (
        policy.tiles or _tiles(dk, dv, weightings, backward=True, split=False))
    return Launch(block_n, num_warps, num_stages, splits, chunk, policy.max_registers)


def dot_precision(*tensors: torch.Tensor) -> str:
    """The kernels' PREC: 'ieee' (exact fp32 products) for fp32 inputs and under the interpreter, which multiplies
    in fp32 anyway; 'bf16' (bf16 tensor-core products, the fp32 states rounded to bf16 for them) when every input is
    bf16; otherwise 'tf32' (fp16 data: fp32 range, so the states never overflow fp16)."""
    if interpreting() or any(t.dtype == torch.float32 for t in tensors):
        return "ieee"
    if all(t.dtype == torch.bfloat16 for t in tensors):
        return "bf16"
    return "tf32"
