"""Host time per eager call of the kernel ops, against bare Triton launches of the same argument count (GPU).

Device time of the fused ops is about 0.1 ms; in eager mode the host's Python and launch path can cost more, and then
whole models at high resolution (small batches) are launch-bound. This measures where the host time goes:

- ``bare_1arg`` / ``bare_12arg``: an empty Triton kernel with one pointer, and with eleven more int arguments (the
  cost of Triton's launcher per argument); ``torch_zeros_16k``: one small zero-fill, as the split path allocates;
- ``la_fwd_N*`` / ``la_fwd_bwd_N*``: ``linear_attention`` as the mixers call it (checks, autograd, state buffer,
  launches); ``la_bwd_direct_N*``: the backward's launch function alone; ``delta_fwd_N*``: the bidirectional delta
  rule's forward;
- cProfiles of the forward and of the direct backward at each N (N=197 fits the GPU without splitting the sequence,
  N=12545 splits it over programs).

Host time per call = wall time of a loop of calls divided by the count, with the GPU queue absorbing the work
(the loop never waits on the device; the sync is outside the timed part). When a call's device time exceeds its host
time the queue fills and the number is the device time instead (forward+backward at N=197: ~0.4 ms either way).

    python benchmarks/launch_overhead.py --out benchmarks/results/launch_overhead/h200.json
"""
from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import json
import os
import pstats
import sys
import time

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vitzoo.ops import linear_attention  # noqa: E402
from vitzoo.ops.delta_rule import delta_rule_bidirectional  # noqa: E402
from vitzoo.ops.linear_attention.function import (  # noqa: E402
    _FEATURE_CODES,
    _linear_attention_bwd,
    _linear_attention_fwd,
)

SIZES = [(256, 197), (4, 12545)]
HEADS, HEAD_DIM = 6, 64
CALLS = 300
EXTRA_ARGS = 11  # ints; the forward kernel has about 40 runtime scalars (sizes, strides): the slope per argument


@triton.jit
def _empty_kernel(x_ptr):
    pass


@triton.jit
def _empty_kernel_11(x_ptr, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10):
    pass


def host_us(fn, calls: int = CALLS) -> float:
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    begin = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - begin
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def profile_text(fn, calls: int = 200) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    profiler.disable()
    torch.cuda.synchronize()
    buffer = io.StringIO()
    stats = pstats.Stats(profiler, stream=buffer)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(25)
    return buffer.getvalue()


def measure_ops(batch: int, n: int, rows: dict, profiles: dict) -> None:
    q, k, v = (torch.randn(batch, n, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16) for _ in range(3))

    def forward():
        linear_attention(q, k, v, feature_map="relu", normalize=True)

    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    grad = torch.randn_like(q)

    def forward_backward():
        linear_attention(qg, kg, vg, feature_map="relu", normalize=True).backward(grad)

    # The backward's Python runs on the autograd engine's thread, out of the caller's cProfile: call it directly.
    options = (None, None, None, 0.0, _FEATURE_CODES["relu"], False, 1.0, True, 1e-6)
    _, state = _linear_attention_fwd(q, k, v, *options, save_state=True, direct_launch=True)

    def backward_only():
        _linear_attention_bwd(grad, q, k, v, *options[:4], state, *options[4:], False, direct_launch=True)

    beta = torch.rand(batch, n, HEADS, device="cuda", dtype=torch.bfloat16)
    rows[f"la_fwd_N{n}"] = host_us(forward)
    rows[f"la_fwd_bwd_N{n}"] = host_us(forward_backward, 100)
    rows[f"la_bwd_direct_N{n}"] = host_us(backward_only, 100)
    rows[f"delta_fwd_N{n}"] = host_us(lambda: delta_rule_bidirectional(q, k, v, beta), 100)
    profiles[f"la_fwd_N{n}"] = profile_text(forward)
    profiles[f"la_bwd_direct_N{n}"] = profile_text(backward_only, 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/launch_overhead/h200.json")
    args = parser.parse_args()
    x = torch.zeros(16, device="cuda")
    ints = list(range(1, EXTRA_ARGS + 1))
    rows = {
        "bare_1arg": host_us(lambda: _empty_kernel[(1,)](x)),
        f"bare_{EXTRA_ARGS + 1}arg": host_us(lambda: _empty_kernel_11[(1,)](x, *ints)),
        "torch_zeros_16k": host_us(lambda: torch.zeros(24, 4300, device="cuda")),
    }
    profiles = {}
    for batch, n in SIZES:
        measure_ops(batch, n, rows, profiles)
    for name, value in rows.items():
        print(f"{name:24s} {value:8.1f} us/call", flush=True)
    for name, text in profiles.items():
        print(f"==== cProfile {name}\n{text}")
    info = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                command="python " + " ".join(sys.argv), calls=CALLS)
    with open(args.out, "w") as f:
        json.dump(dict(info=info, host_us_per_call=rows, profiles=profiles), f, indent=1)


if __name__ == "__main__":
    main()
