"""Where the kernels' device time goes (GPU): structural probes timed beside the op, and a workload for Nsight Compute.

``probes``: device time (CUDA-graph replay) of the linear-attention forward against kernels that keep its shape but
drop work, on the benchmark's inputs (bf16, H=6, d=64, B*N ~ 50k, q/k/v strided views of a fused qkv):

- ``copy3``: one pass, o = q + k + v tile by tile: what this layout costs to stream, with no dependency between passes;
- ``two_pass_add``: per (batch, head), sum K*V tiles then add the sum to every Q tile (two passes, no dot);
- ``two_pass_dot``: the same with the state product as a bf16 dot (an unnormalised linear attention, no features);
- the op itself (ReLU, normalised) on those views and on contiguous (B, N, H, D) and (B, H, N, D) copies.

``configs``: forward and forward+backward device time of the op with the ReLU map and the normaliser switched on
and off one at a time (what each costs).

``ncu``: runs each kernel of interest once after warm-up between ``cudaProfilerStart``/``Stop``, for
``ncu --profile-from-start off``.

    python benchmarks/profile_kernels.py probes --out benchmarks/results/profile_kernels/h200.json
    python benchmarks/profile_kernels.py configs --out benchmarks/results/profile_kernels/h200.json

Each mode writes its own section (``probes`` or ``configs``) of the results file and keeps the other.
    ncu --clock-control none --profile-from-start off --set full python benchmarks/profile_kernels.py ncu
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from linear_attention import copy_bandwidth  # noqa: E402  (benchmarks/linear_attention.py, this script's folder)

from vitzoo.bench.common import write_json  # noqa: E402
from vitzoo.ops.delta_rule import delta_rule_triton  # noqa: E402
from vitzoo.ops.linear_attention import linear_attention_triton  # noqa: E402

SIZES = [(256, 197), (64, 785), (16, 3137), (4, 12545)]
HEADS, HEAD_DIM = 6, 64
RELU = dict(feature_map="relu", normalize=True)


@triton.jit
def _copy3_kernel(q_ptr, k_ptr, v_ptr, o_ptr, N, H, s_b, s_n, s_h, so_b, so_n, so_h,
                  BLOCK_N: tl.constexpr, D: tl.constexpr):
    pid = tl.program_id(0)
    bi, hi = pid // H, pid % H
    offs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, D)
    mask = (offs < N)[:, None]
    src = bi * s_b + hi * s_h + offs[:, None] * s_n + cols[None, :]
    x = tl.load(q_ptr + src, mask=mask).to(tl.float32) + tl.load(k_ptr + src, mask=mask).to(tl.float32)
    x += tl.load(v_ptr + src, mask=mask).to(tl.float32)
    tl.store(o_ptr + bi * so_b + hi * so_h + offs[:, None] * so_n + cols[None, :], x.to(tl.bfloat16), mask=mask)


@triton.jit
def _two_pass_kernel(q_ptr, k_ptr, v_ptr, o_ptr, N, H, s_b, s_n, s_h, so_b, so_n, so_h,
                     BLOCK_N: tl.constexpr, D: tl.constexpr, USE_DOT: tl.constexpr):
    pid = tl.program_id(0)
    bi, hi = pid // H, pid % H
    rows = tl.arange(0, BLOCK_N)
    cols = tl.arange(0, D)
    base = bi * s_b + hi * s_h
    acc = tl.zeros((BLOCK_N, D), tl.float32) if not USE_DOT else tl.zeros((D, D), tl.float32)
    for start in range(0, N, BLOCK_N):
        offs = start + rows
        mask = (offs < N)[:, None]
        src = base + offs[:, None] * s_n + cols[None, :]
        k = tl.load(k_ptr + src, mask=mask, other=0.0)
        v = tl.load(v_ptr + src, mask=mask, other=0.0)
        if USE_DOT:
            acc = tl.dot(tl.trans(k), v, acc)
        else:
            acc += k.to(tl.float32) * v.to(tl.float32)
    for start in range(0, N, BLOCK_N):
        offs = start + rows
        mask = (offs < N)[:, None]
        q = tl.load(q_ptr + base + offs[:, None] * s_n + cols[None, :], mask=mask, other=0.0)
        if USE_DOT:
            o = tl.dot(q, acc.to(tl.bfloat16))
        else:
            o = q.to(tl.float32) + acc
        tl.store(o_ptr + bi * so_b + hi * so_h + offs[:, None] * so_n + cols[None, :], o.to(tl.bfloat16), mask=mask)


def _views(b: int, n: int):
    qkv = torch.randn(b, n, 3, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    return qkv.unbind(2)


def copy3(q, k, v, block_n=64, warps=4):
    b, n, h, d = q.shape
    o = torch.empty(b, n, h, d, device=q.device, dtype=q.dtype)
    _copy3_kernel[(b * h, triton.cdiv(n, block_n))](
        q, k, v, o, n, h, q.stride(0), q.stride(1), q.stride(2), o.stride(0), o.stride(1), o.stride(2),
        BLOCK_N=block_n, D=d, num_warps=warps)
    return o


def two_pass(q, k, v, use_dot, block_n=64, warps=4, stages=3):
    b, n, h, d = q.shape
    o = torch.empty(b, n, h, d, device=q.device, dtype=q.dtype)
    _two_pass_kernel[(b * h,)](
        q, k, v, o, n, h, q.stride(0), q.stride(1), q.stride(2), o.stride(0), o.stride(1), o.stride(2),
        BLOCK_N=block_n, D=d, USE_DOT=use_dot, num_warps=warps, num_stages=stages)
    return o


def _graph_ms(fn) -> float:
    return triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median")


def _compiled_stats() -> dict:
    """Registers, spills and shared memory of every compiled variant of the linear-attention kernels and the
    two-pass probe (Triton's per-device caches; the layout of those caches is internal, hence the getattr)."""
    import importlib

    la = importlib.import_module("vitzoo.ops.linear_attention.kernels")
    stats = {}
    for kernel in (la._linear_attention_fwd_kernel, la._linear_attention_bwd_kernel, _two_pass_kernel):
        for device_cache in getattr(kernel, "device_caches", {}).values():
            for compiled in device_cache[0].values():
                meta = compiled.metadata
                stats[f"{kernel.fn.__name__}/{meta.num_warps}w/{meta.num_stages}s/{compiled.hash[:8]}"] = dict(
                    regs=getattr(compiled, "n_regs", None), spills=getattr(compiled, "n_spills", None),
                    shared=meta.shared)
    return stats


def _probe_cases(q, k, v) -> dict:
    contiguous = [t.contiguous() for t in (q, k, v)]
    head_major = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]
    return {
        "copy3": lambda: copy3(q, k, v),
        "copy3_block128": lambda: copy3(q, k, v, 128, 8),
        "two_pass_add": lambda: two_pass(q, k, v, False),
        "two_pass_dot": lambda: two_pass(q, k, v, True),
        "two_pass_dot_w8": lambda: two_pass(q, k, v, True, 64, 8, 3),
        "two_pass_dot_b128_w8": lambda: two_pass(q, k, v, True, 128, 8, 3),
        "two_pass_dot_s4": lambda: two_pass(q, k, v, True, 64, 4, 4),
        "op_relu_views": lambda: linear_attention_triton(q, k, v, **RELU),
        "op_relu_contiguous": lambda: linear_attention_triton(*contiguous, **RELU),
        "op_relu_head_major": lambda: linear_attention_triton(*head_major, **RELU),
    }


def probes(out: str) -> None:
    bandwidth = copy_bandwidth()
    rows = []
    for b, n in SIZES:
        q, k, v = _views(b, n)
        floor = 4 * q.numel() * 2 / bandwidth * 1e3
        row = {"B": b, "N": n, "floor_fwd_ms": floor}
        cases = _probe_cases(q, k, v)
        with torch.no_grad():
            for name, fn in cases.items():
                ms = _graph_ms(fn)
                row[f"{name}_ms"] = ms
                print(f"N={n:>6} {name:>22} {ms:.4f} ms  {ms / floor:.2f}x floor", flush=True)
        rows.append(row)
    stats = _compiled_stats()
    _write_section(out, "probes", {"info": _run_info(bandwidth), "results": rows, "compiled": stats})
    for name, s in stats.items():
        print(name, s)


def _run_info(bandwidth: float) -> dict:
    return dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                command=" ".join([sys.executable, *sys.argv]), copy_bandwidth_GBps=bandwidth / 1e9,
                timing="triton.testing.do_bench_cudagraph median (device time)")


CONFIGS = {
    "relu_normalized": dict(feature_map="relu", normalize=True),
    "relu": dict(feature_map="relu"),
    "identity_normalized": dict(feature_map="identity", normalize=True),
    "identity": dict(feature_map="identity"),
}


def configs(out: str) -> None:
    bandwidth = copy_bandwidth()
    rows = []
    for b, n in SIZES:
        q, k, v = (t.detach().requires_grad_() for t in _views(b, n))
        grad = torch.randn_like(q)
        floor = 4 * q.numel() * 2 / bandwidth * 1e3
        row = {"B": b, "N": n, "floor_fwd_ms": floor, "floor_fwdbwd_ms": floor * 11 / 4}
        for name, kwargs in CONFIGS.items():
            def fwd(q=q, k=k, v=v, kwargs=kwargs):
                with torch.no_grad():
                    return linear_attention_triton(q, k, v, **kwargs)

            def fwd_bwd(q=q, k=k, v=v, grad=grad, kwargs=kwargs):
                return torch.autograd.grad(linear_attention_triton(q, k, v, **kwargs), (q, k, v), grad)

            fwd_ms, fwd_bwd_ms = _graph_ms(fwd), _graph_ms(fwd_bwd)
            row[f"{name}_fwd_ms"], row[f"{name}_fwdbwd_ms"] = fwd_ms, fwd_bwd_ms
            print(f"N={n:>6} {name:>20} fwd {fwd_ms:.4f} ms ({fwd_ms / floor:.2f}x) fwd+bwd {fwd_bwd_ms:.4f} ms "
                  f"({fwd_bwd_ms / row['floor_fwdbwd_ms']:.2f}x)", flush=True)
        rows.append(row)
    _write_section(out, "configs", {"info": _run_info(bandwidth), "results": rows})


def _write_section(out: str, mode: str, section: dict) -> None:
    """Replace ``mode``'s section of the results file at ``out`` (atomically), keeping the other modes'."""
    path = Path(out)
    data = json.loads(path.read_text()) if path.is_file() else {}
    write_json(path, {**data, mode: section})


def ncu_workload() -> None:
    """Each case once after a warm-up, inside the profiled range."""
    cases = []
    for b, n in ((256, 197), (4, 12545)):
        q, k, v = (t.detach().requires_grad_() for t in _views(b, n))
        grad = torch.randn_like(q)
        cases.append(lambda q=q, k=k, v=v: two_pass(q.detach(), k.detach(), v.detach(), True))
        cases.append(lambda q=q, k=k, v=v, g=grad: torch.autograd.grad(
            linear_attention_triton(q, k, v, **RELU), (q, k, v), g))
    for b, n in ((256, 197), (16, 3137)):
        q, k, v = (torch.randn(b, n, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        beta = torch.rand(b, n, HEADS, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        grad = torch.randn_like(v)
        cases.append(lambda q=q, k=k, v=v, beta=beta, g=grad: torch.autograd.grad(
            delta_rule_triton(q, k, v, beta), (q, k, v, beta), g))
    for fn in cases:
        fn()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for fn in cases:
        fn()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("probes", "configs", "ncu"))
    parser.add_argument("--out", default="benchmarks/results/profile_kernels/h200.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.mode == "probes":
        probes(args.out)
    elif args.mode == "configs":
        configs(args.out)
    else:
        ncu_workload()


if __name__ == "__main__":
    main()
