"""Launch settings of the delta-rule kernels: chunk size, warps, value blocks of the recurrences, product mode.

``benchmarks/delta_rule.py`` times alternatives to the constants below (H200 numbers in ``benchmarks/NOTES.md``).
"""
from __future__ import annotations

import torch

from ..utils import cdiv, interpreting, multiprocessor_count, next_power_of_2


def dot_mode(dtype: torch.dtype) -> int:
    """The kernels' DOT_MODE (see ``kernels._dot``): 0 fp32 at the default precision, 1 bf16, 2 fp16, 3 fp32 IEEE."""
    if interpreting():  # the interpreter's bf16 products are wrong; its fp16 ones are right
        return 2 if dtype == torch.float16 else 0
    return {torch.float32: 3, torch.bfloat16: 1, torch.float16: 2}[dtype]


# Launch settings of the Triton path. The kernels take any power-of-two chunk >= 16; a sequence shorter than the
# chunk gets the next power of two >= N (at least 16).
KERNEL_CHUNK = 32
NUM_WARPS = 4  # the recurrences and the output kernel
WY_NUM_WARPS = 2  # H200, 2026-11-30: 0.147 vs 0.180 ms at N=197 with 4 (the other kernels are slower with 2)
GRADS_NUM_WARPS = 4
# The two recurrences split the value dim into blocks while (batch, head, direction) sequences alone do not give
# every multiprocessor a program, down to this width. Each value block recomputes its chunk's Q K^T and L2 norms, so
# splitting pays only where SMs would idle (H200, 2026-11-30: at N=3137, 192 sequences, the unsplit recurrences took
# fwd+bwd from 1.232 to 1.192 ms; at N=12545, 48 sequences, blocks of 32 beat 64, 1.581 vs 1.646 ms, and 16).
SEQ_BV_MIN = 32


def chunk_size(n: int) -> int:
    """Tokens per chunk for a sequence of ``n`` tokens."""
    return min(KERNEL_CHUNK, max(16, next_power_of_2(n)))


def _programs_to_fill(device: torch.device) -> int:
    return multiprocessor_count(device) if device.type == "cuda" else 1  # the interpreter: one "multiprocessor"


def block_sizes(dk: int, dv: int, num_seqs: int, device: torch.device) -> tuple[int, int, int]:
    """(BK, BV of the chunk-parallel kernels: the whole value dim, BV of the two recurrences)."""
    bk = max(16, next_power_of_2(dk))
    bv = max(16, next_power_of_2(dv))
    bv_seq = min(bv, 64)
    while bv_seq > SEQ_BV_MIN and num_seqs * cdiv(dv, bv_seq) < _programs_to_fill(device):
        bv_seq //= 2
    return bk, bv, bv_seq
