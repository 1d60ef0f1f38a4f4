"""Registers, spills and shared memory of the delta-rule kernels compiled for sm_90 (H100/H200), without a GPU.

Triton compiles each kernel for a ``GPUTarget`` and ``ptxas -v`` (shipped with Triton) reports the resources: the
numbers that set occupancy, to check before and after a kernel change (see CONTRIBUTING.md).

    python benchmarks/compile_sm90.py [--chunk 32] [--head-dim 64 128]
"""
from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # compile, do not interpret
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from vitzoo.kernels import delta_rule as dr  # noqa: E402

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
FP32_POINTERS = {"t_ptr"}  # every other pointer is bf16 (the benchmark's dtype)


def resources(kernel, constexprs: dict, num_warps: int) -> dict[str, int]:
    """Compile ``kernel`` for sm_90 with ``constexprs``; registers, spill bytes and shared memory per block."""
    params = list(inspect.signature(kernel.fn).parameters)
    signature, constants = {}, {}
    for i, name in enumerate(params):
        if name in constexprs:
            signature[name] = "constexpr"
            constants[(i,)] = constexprs[name]
        elif name.endswith("_ptr"):
            signature[name] = "*fp32" if name in FP32_POINTERS else "*bf16"
        else:
            signature[name] = "fp32" if name == "scale" else "i32"
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(params) if name.endswith("_ptr")}
    compiled = triton.compile(ASTSource(kernel, signature, constants, attrs), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps})
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "kernel.ptx")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        report = subprocess.run([PTXAS, "-v", "--gpu-name=sm_90a", ptx, "-o", os.path.join(tmp, "kernel.cubin")],
                                capture_output=True, text=True, check=True).stderr
    return {"registers": int(re.search(r"Used (\d+) registers", report).group(1)),
            "spill_bytes": int(re.search(r"(\d+) bytes spill stores", report).group(1)),
            "shared_bytes": compiled.metadata.shared}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=int, default=dr.KERNEL_CHUNK)
    parser.add_argument("--head-dim", type=int, nargs="+", default=[64, 128])
    args = parser.parse_args()
    chunk = args.chunk
    for d in args.head_dim:
        base = dict(DK=d, DV=d, BT=chunk, BK=d, FIRST_DIR=0, L2NORM=True, DOT_MODE=1)
        both = dict(base, NUM_DIRS=2)
        kernels = [
            ("wy", dr._delta_rule_wy_kernel, dict(both, LOG2_BT=chunk.bit_length() - 1, BV=d, STORE_T=True),
             dr.NUM_WARPS),
            ("states", dr._delta_rule_states_kernel, dict(base, BV=min(d, 64)), dr.NUM_WARPS),
            ("output", dr._delta_rule_output_kernel, dict(both, BV=d), dr.NUM_WARPS),
            ("dstates", dr._delta_rule_dstates_kernel, dict(both, BV=min(d, 64)), dr.NUM_WARPS),
            ("grads", dr._delta_rule_grads_kernel, dict(both, BV=d), dr.GRADS_NUM_WARPS),
        ]
        for name, kernel, constexprs, warps in kernels:
            r = resources(kernel, constexprs, warps)
            print(f"chunk {chunk} d {d:>3} {name:>8} ({warps} warps): {r['registers']:>3} registers, "
                  f"{r['spill_bytes']:>5} B spilled, {r['shared_bytes']:>6} B shared", flush=True)


if __name__ == "__main__":
    main()
