"""Device time of ZeroS's weightings and FEM's values with and without their forward split over chunks of tokens (GPU).

Both ops give each (batch, head) a program that walks its tokens two (FEM) or three (ZeroS) times; where those
programs would leave multiprocessors idle and a walk is long, the forward runs as two or three launches over chunks
of tokens instead (``ops.utils.token_chunks``, the ops' ``heuristics.py``). This times, at the tiny models' head
shapes (ZeroS-T: 3 heads of 64; FEM-T: 3 value heads of 32; bf16 inputs as the projections give them), each forward
as the heuristic launches it, as one launch, and split for 2 and 8 programs per multiprocessor, at 224, 512 and
1024 px, batch 1 and the batch of ``vitzoo-bench --compare`` (256 at 224 px and the same tokens per batch above).
Device time is ``triton.testing.do_bench_cudagraph``'s median (CUDA-graph replay); every variant's outputs are
checked against the one launch.

    python benchmarks/token_chunks.py --out benchmarks/results/token_chunks/h200.json
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitzoo.bench.common import environment, git_revision, write_json  # noqa: E402

zeros_function = importlib.import_module("vitzoo.ops.zeros_weights.function")
zeros_heuristics = importlib.import_module("vitzoo.ops.zeros_weights.heuristics")
free_energy_function = importlib.import_module("vitzoo.ops.free_energy.function")
free_energy_heuristics = importlib.import_module("vitzoo.ops.free_energy.heuristics")

SIZES = {224: (197, 256), 512: (1025, 49), 1024: (4097, 12)}  # img px: (tokens, batch of the comparison)
HEADS = 3
# each op's heuristic constants: (split below this many programs per SM, programs per SM, shortest split walk)
KNOBS = {"zeros": (zeros_heuristics, ("SPLIT_BELOW", "PROGRAMS_PER_SM", "SPLIT_MIN_BLOCKS")),
         "fem": (free_energy_heuristics, ("VALUES_SPLIT_BELOW", "VALUES_PROGRAMS_PER_SM", "VALUES_SPLIT_MIN_BLOCKS"))}
# name: (split below, programs per SM, shortest split walk); None keeps the heuristic's own
VARIANTS = {"heuristic": None, "one launch": (0, 4, 1), "split, 2 per SM": (1e9, 2, 1), "split, 8 per SM": (1e9, 8, 1)}


@contextlib.contextmanager
def knobs(op: str, values: tuple | None) -> Iterator[None]:
    module, names = KNOBS[op]
    saved = [getattr(module, name) for name in names]
    try:
        if values is not None:
            for name, value in zip(names, values, strict=True):
                setattr(module, name, value)
        yield
    finally:
        for name, value in zip(names, saved, strict=True):
            setattr(module, name, value)


def zeros_call(batch: int, tokens: int) -> tuple[Callable[[], tuple], Callable[[], int]]:
    """The forward of ZeroS-T's weightings and its chunk count."""
    u = torch.randn(batch, tokens, 4, HEADS, 64, device="cuda", dtype=torch.bfloat16)[:, :, 3]
    gates = torch.randn(batch, tokens, 2, HEADS, device="cuda", dtype=torch.bfloat16)
    mu, log_tau = torch.randn(HEADS, 64, device="cuda"), torch.zeros(HEADS, device="cuda")
    return (lambda: zeros_function._zeros_weights_fwd(u, gates, mu, log_tau)[:2],
            lambda: zeros_heuristics.forward_chunks(batch * HEADS, tokens, u.device)[0])


def fem_call(batch: int, tokens: int) -> tuple[Callable[[], tuple], Callable[[], int]]:
    """The forward of FEM-T's values and its chunk count."""
    v = torch.randn(batch, tokens, 3, HEADS, 32, device="cuda", dtype=torch.bfloat16)[:, :, 2] * 4
    beta = 0.5 + 2.5 * torch.rand(HEADS, 32, device="cuda")
    return (lambda: free_energy_function._free_energy_values_fwd(v, beta, torch.bfloat16),
            lambda: free_energy_heuristics.values_chunks(batch * HEADS, tokens, v.device)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), choices=list(SIZES))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("this benchmark times Triton kernels and needs a CUDA GPU")
    torch.manual_seed(0)
    rows = []
    for op, make in (("zeros", zeros_call), ("fem", fem_call)):
        for size in args.sizes:
            tokens, compare_batch = SIZES[size]
            for batch in dict.fromkeys((1, compare_batch)):
                call, chunks = make(batch, tokens)
                with knobs(op, VARIANTS["one launch"]):
                    expected = [t.float() for t in call()]
                for variant, values in VARIANTS.items():
                    with knobs(op, values):
                        got, count = call(), chunks()
                        for a, b in zip(got, expected, strict=True):  # chunks sum in another order
                            torch.testing.assert_close(a.float(), b, rtol=1e-4, atol=1e-5)
                        us = triton.testing.do_bench_cudagraph(call, rep=50) * 1e3
                    rows.append(dict(op=op, img_size=size, batch=batch, tokens=tokens, variant=variant, chunks=count,
                                     us=round(us, 1)))
                    print(f"{op:5s} {size:4d} px batch {batch:3d} {variant:16s} chunks {count:3d}: {us:8.1f} us",
                          flush=True)
    info = dict(environment(torch.device("cuda")), command=" ".join(["python"] + sys.argv), git_revision=git_revision())
    write_json(args.out, {"info": info, "rows": rows})


if __name__ == "__main__":
    main()
