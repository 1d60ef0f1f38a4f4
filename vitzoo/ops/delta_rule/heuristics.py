"""Launch settings of the delta-rule kernels: chunk size, warps, value blocks of the recurrences, product mode.

:class:`LaunchSettings` holds them; the host launches (``function._delta_rule_fwd`` / ``_infer`` / ``_bwd``) take one
as ``launch=`` and use :data:`DEFAULT_LAUNCH` without it. ``benchmarks/delta_rule.py`` times alternatives to the
defaults below that way (GPU numbers in ``benchmarks/NOTES.md``).
"""
from __future__ import annotations

import dataclasses

import torch

from ..utils import cdiv, interpreting, multiprocessor_count, padded


def dot_mode(dtype: torch.dtype) -> int:
    """The kernels' DOT_MODE (see ``kernels._dot``): 0 fp32 at the default precision, 1 bf16, 2 fp16, 3 fp32 IEEE."""
    if interpreting():  # the interpreter's bf16 products are wrong; its fp16 ones are right
        return 2 if dtype == torch.float16 else 0
    return {torch.float32: 3, torch.bfloat16: 1, torch.float16: 2}[dtype]


def _is_power_of_2(x: int) -> bool:
    return x >= 1 and x & (x - 1) == 0


@dataclasses.dataclass(frozen=True)
class LaunchSettings:
    """How the delta-rule kernels are launched.

    Attributes:
        chunk: tokens per chunk (a power of two >= 16); a shorter sequence takes the next power of two >= N, at
            least 16.
        num_warps: warps of the two recurrences and the output kernel.
        wy_num_warps: warps of the WY kernel.
        grads_num_warps: warps of the input-gradient kernel.
        seq_bv_max: the recurrences' value block (a power of two >= 16) while every multiprocessor has a program.
        seq_bv_min: while multiprocessors would idle, the recurrences halve their value block as long as it is
            wider than this (at least 16).
        inference_chunk: tokens per chunk of the one-pass inference kernel (a power of two >= 16).
        one_pass_fill: inference runs the one-pass kernel while its programs number at least this many per
            multiprocessor (see :func:`one_pass_inference`; 0: always).
    """

    chunk: int = 32
    num_warps: int = 4
    wy_num_warps: int = 2  # H200, N=197: 0.147 vs 0.180 ms with 4 (the other kernels are slower with 2)
    grads_num_warps: int = 4
    seq_bv_max: int = 64
    # Each value block recomputes its chunk's Q K^T and L2 norms, so splitting pays only where SMs would idle (H200:
    # at N=3137, 192 sequences, the unsplit recurrences took fwd+bwd from 1.232 to 1.192 ms; at N=12545, 48
    # sequences, blocks of 32 beat 64, 1.581 vs 1.646 ms, and 16).
    seq_bv_min: int = 32
    inference_chunk: int = 16  # DeltaNet-T at 224 px: see benchmarks/delta_rule.py --inference-only
    one_pass_fill: float = 1.0

    def __post_init__(self) -> None:
        # tl.arange and tl.dot need power-of-two tiles of at least 16; Triton, a power-of-two warp count
        for name in ("chunk", "seq_bv_max", "inference_chunk"):
            value = getattr(self, name)
            if value < 16 or not _is_power_of_2(value):
                raise ValueError(f"LaunchSettings.{name} must be a power of two >= 16, got {value}")
        if not self.one_pass_fill >= 0:
            raise ValueError(f"LaunchSettings.one_pass_fill must be >= 0, got {self.one_pass_fill}")
        if self.seq_bv_min < 16:
            raise ValueError(f"LaunchSettings.seq_bv_min must be at least 16, got {self.seq_bv_min}")
        for name in ("num_warps", "wy_num_warps", "grads_num_warps"):
            if not _is_power_of_2(getattr(self, name)):
                raise ValueError(f"LaunchSettings.{name} must be a power of two, got {getattr(self, name)}")


DEFAULT_LAUNCH = LaunchSettings()


def chunk_size(n: int, launch: LaunchSettings = DEFAULT_LAUNCH, one_pass: bool = False) -> int:
    """Tokens per chunk for a sequence of ``n`` tokens (``one_pass``: in the one-pass inference kernel)."""
    return min(launch.inference_chunk if one_pass else launch.chunk, padded(n))


def one_pass_inference(num_seqs: int, dv: int, device: torch.device, launch: LaunchSettings = DEFAULT_LAUNCH) -> bool:
    """Whether inference runs the recurrence and the output as one kernel: while its programs, one per (batch, head)
    sequence and value block of ``seq_bv_max``, number ``launch.one_pass_fill`` per multiprocessor. Its directions
    run one after the other in a program, so with fewer sequences the states kernel's (direction, sequence) programs
    and the chunk-parallel output kernel finish first (``benchmarks/delta_rule.py --inference-only``)."""
    return num_seqs * cdiv(dv, launch.seq_bv_max) >= launch.one_pass_fill * _programs_to_fill(device)


def _programs_to_fill(device: torch.device) -> int:
    return multiprocessor_count(device) if device.type == "cuda" else 1  # the interpreter: one "multiprocessor"


def block_sizes(dk: int, dv: int, num_seqs: int, device: torch.device,
                launch: LaunchSettings = DEFAULT_LAUNCH) -> tuple[int, int, int]:
    """(BK, BV of the chunk-parallel kernels: the whole value dim, BV of the two recurrences)."""
    bk, bv = padded(dk), padded(dv)
    bv_seq = min(bv, launch.seq_bv_max)
    while bv_seq > launch.seq_bv_min and num_seqs * cdiv(dv, bv_seq) < _programs_to_fill(device):
        bv_seq //= 2
    return bk, bv, bv_seq
