"""Benchmark the fused linear-attention op against the PyTorch reference, SDPA and the byte floor (bf16, H=6, d=64).

For each N in {197, 785, 3137, 12545} at B*N ~ 50k tokens (B = 256, 64, 16, 4) it first checks the Triton op
(ReLU-normalised and InLine configurations) and its gradients against the float64 reference on the same inputs and
refuses to report on a mismatch, then times forward and forward+backward with ``triton.testing.do_bench`` (median,
L2 flushed between runs). The byte floor reads each input once and writes each output once at the device-to-device
copy bandwidth measured in the same run: forward q, k, v -> o (4 tensors), forward+backward adds q, k, v, do ->
dq, dk, dv (11 tensors in all).

    python benchmarks/linear_attention.py --out benchmarks/results/linear_attention/h200.json
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vitzoo.ops import linear_attention_reference  # noqa: E402
from vitzoo.ops.linear_attention import linear_attention_triton  # noqa: E402
from vitzoo.ops.linear_attention.function import (  # noqa: E402
    _FEATURE_CODES,
    _linear_attention_bwd,
    _linear_attention_fwd,
)
from vitzoo.ops.linear_attention.heuristics import (  # noqa: E402
    BACKWARD_POLICY,
    FORWARD_POLICY,
    LaunchPolicy,
    backward_launch,
    forward_launch,
)
from vitzoo.ops.testing import relative_error  # noqa: E402

SIZES = [(256, 197), (64, 785), (16, 3137), (4, 12545)]
HEADS, HEAD_DIM = 6, 64
TOLERANCE = 1e-2  # relative L2 error vs float64, bf16 inputs


def _configs(n: int, d: int) -> dict[str, dict]:
    return {
        "relu": dict(feature_map="relu", normalize=True),
        "inline": dict(feature_map="identity", center_keys=True, scale=d**-0.5 / n, feature_const=n**-0.5),
    }


def _bench(fn) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def _bench_graph(fn) -> float | None:
    """Median of CUDA-graph replays: device time without the host's launch overhead."""
    import triton.testing

    try:
        return triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median")
    except RuntimeError as exc:
        print(f"graph capture failed: {str(exc).splitlines()[0][:200]}", flush=True)
        return None


def _time(row: dict, name: str, fn) -> None:
    row[f"{name}_ms"] = _bench(fn)
    row[f"{name}_graph_ms"] = _bench_graph(fn)


def copy_bandwidth() -> float:
    """Bytes per second of a large device-to-device copy (bytes read plus bytes written)."""
    src = torch.randn(1 << 29, device="cuda", dtype=torch.bfloat16)  # 1 GiB
    dst = torch.empty_like(src)
    ms = _bench(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def _inputs(b: int, n: int):
    """timm-style fused qkv (B, N, 3, H, D) and its strided q, k, v views; fresh random bf16."""
    qkv = torch.randn(b, n, 3, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    return qkv


def relative_errors(qkv: torch.Tensor, kwargs: dict) -> list[float]:
    """Relative errors of the Triton op's output and q, k, v gradients against the float64 reference."""
    q, k, v = qkv.unbind(2)
    out = linear_attention_triton(q, k, v, **kwargs)
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    ref_in = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = linear_attention_reference(*ref_in, **kwargs)
    ref_grads = torch.autograd.grad(ref, ref_in, grad.double())
    return [relative_error(out, ref)] + [relative_error(g, rg) for g, rg in zip(grads, ref_grads, strict=True)]


def check(b: int, n: int) -> dict[str, float]:
    """Forward and q, k, v gradients of the Triton op vs float64; raises on a mismatch."""
    errors = {}
    qkv = _inputs(b, n)
    for name, kwargs in _configs(n, HEAD_DIM).items():
        errs = relative_errors(qkv, kwargs)
        errors[name] = max(errs)
        if errors[name] > TOLERANCE:
            raise SystemExit(f"MISMATCH at B={b} N={n} config={name}: rel errors (out, dq, dk, dv) = {errs}")
    return errors


def time_size(b: int, n: int, bandwidth: float) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    row: dict = {"B": b, "N": n, "H": HEADS, "d": HEAD_DIM}
    tensor_bytes = b * n * HEADS * HEAD_DIM * 2
    row["floor_fwd_ms"] = 4 * tensor_bytes / bandwidth * 1e3
    row["floor_fwdbwd_ms"] = 11 * tensor_bytes / bandwidth * 1e3
    qkv = _inputs(b, n)
    grad = torch.randn(b, n, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)

    def linear(op, kwargs):
        def fwd():
            with torch.no_grad():
                q, k, v = qkv.unbind(2)
                return op(q, k, v, **kwargs)

        def fwd_bwd():
            q, k, v = qkv.unbind(2)
            return torch.autograd.grad(op(q, k, v, **kwargs), (q, k, v), grad)

        return fwd, fwd_bwd

    for name, kwargs in _configs(n, HEAD_DIM).items():
        fwd, fwd_bwd = linear(linear_attention_triton, kwargs)
        _time(row, f"triton_{name}_fwd", fwd)
        _time(row, f"triton_{name}_fwdbwd", fwd_bwd)
    fwd, fwd_bwd = linear(linear_attention_reference, _configs(n, HEAD_DIM)["relu"])
    _time(row, "reference_relu_fwd", fwd)
    _time(row, "reference_relu_fwdbwd", fwd_bwd)

    def sdpa_fns():
        def fwd():
            with torch.no_grad():
                q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
                return F.scaled_dot_product_attention(q, k, v)

        def fwd_bwd():
            q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
            out = F.scaled_dot_product_attention(q, k, v)
            return torch.autograd.grad(out, (q, k, v), grad.transpose(1, 2))

        return fwd, fwd_bwd

    fwd, fwd_bwd = sdpa_fns()
    _time(row, "sdpa_fwd", fwd)
    _time(row, "sdpa_fwdbwd", fwd_bwd)
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        label = backend.name.lower()
        try:
            with sdpa_kernel(backend):
                row[f"sdpa_{label}_fwd_ms"] = _bench(fwd)
                row[f"sdpa_{label}_fwdbwd_ms"] = _bench(fwd_bwd)
        except RuntimeError as exc:  # backend not available for these inputs
            row[f"sdpa_{label}_error"] = str(exc).splitlines()[0][:200]
    return row


def _variant(forward: dict | None = None, backward: dict | None = None, **both) -> tuple[LaunchPolicy, LaunchPolicy]:
    """(forward, backward) launch policies: the defaults with ``both`` and the per-pass fields replaced."""
    return (dataclasses.replace(FORWARD_POLICY, **both, **(forward or {})),
            dataclasses.replace(BACKWARD_POLICY, **both, **(backward or {})))


# name: (forward, backward) launch policies (vitzoo.ops.linear_attention.heuristics.LaunchPolicy: split_below,
# programs_per_sm, tiles = (BLOCK_N, num_warps, num_stages), max_registers)
SWEEP: dict[str, tuple[LaunchPolicy, LaunchPolicy]] = {
    "default": _variant(),
    "split_below4": _variant({"split_below": 4}),  # the forward splits as the backward does (old default)
    "bwd32": _variant({"tiles": (64, 4, 3)}, {"tiles": (32, 4, 3)}),  # 32-token backward tiles when split too
    "fwd_stages3": _variant({"tiles": (64, 4, 3)}, {"tiles": (32, 4, 3)}),  # three forward stages at every N
    "fwd_stages2": _variant({"tiles": (64, 4, 2)}, {"tiles": (32, 4, 3)}),  # two at every N
    # the backward's query and key passes as two launches (the split path) even when B*H fills the GPU: fewer live
    # registers per pass, sequences cut into ~24 programs per SM
    "bwd_two_pass_t32": _variant({"tiles": (64, 4, 2)}, {"tiles": (32, 4, 3), "split_below": 1000},
                                 programs_per_sm=24),
    "bwd_two_pass_t64w8": _variant({"tiles": (64, 4, 2)}, {"tiles": (64, 8, 2), "split_below": 1000},
                                   programs_per_sm=24),
    "split_per_sm8": _variant(programs_per_sm=8),  # more programs per SM when a sequence is split
    # forward tile shapes for the split forward of N >= 785 (the backward's tiles are fixed too)
    "fwd_t128w8": _variant({"tiles": (128, 8, 3)}, {"tiles": (32, 4, 3)}),
    "fwd_t32": _variant({"tiles": (32, 4, 3)}, {"tiles": (32, 4, 3)}),
    # backward tiles (fixed for the split backward of N >= 785 too, so only N=197 tells; forward as the default at
    # N=197)
    "bwd_stages4": _variant({"tiles": (64, 4, 2)}, {"tiles": (32, 4, 4)}),
    "bwd_t16": _variant({"tiles": (64, 4, 2)}, {"tiles": (16, 4, 3)}),
    "bwd_t64w8": _variant({"tiles": (64, 4, 2)}, {"tiles": (64, 8, 2)}),
    # fewer programs per split sequence (forward and backward of N >= 785)
    "split_per_sm2": _variant(programs_per_sm=2),
    "split_per_sm3": _variant(programs_per_sm=3),
    # the backward capped at 168 registers: 3 blocks of 4 warps per SM instead of 2 (H200: slower, 2.62x the floor
    # at N=197 against 2.37x)
    "bwd_regs168": _variant(backward={"max_registers": 168}),
    # one forward program per sequence down to half a program per SM (N=3137: 96 sequences unsplit, no zero-fill,
    # no atomics, one launch), with deeper pipelines for the long passes (fixed tiles apply at every N).
    # H200: 2.5-3.0x the floor at N=3137 against 1.6x split
    "fwd_unsplit": _variant({"split_below": 0.5}),
    "fwd_unsplit_s4": _variant({"split_below": 0.5, "tiles": (64, 4, 4)}, {"tiles": (32, 4, 3)}),
    "fwd_unsplit_t128w8": _variant({"split_below": 0.5, "tiles": (128, 8, 3)}, {"tiles": (32, 4, 3)}),
}


def launched(q, k, v, kwargs: dict, policies: tuple[LaunchPolicy, LaunchPolicy], grad: torch.Tensor | None = None):
    """The kernels' output, and with ``grad`` also (dq, dk, dv), launched under ``policies`` (eager host launches,
    no autograd; the configurations of :func:`_configs` only: no weights, a float constant or none)."""
    b, n, h, d = q.shape
    options = (float(kwargs.get("feature_const", 0.0)), _FEATURE_CODES[kwargs.get("feature_map", "identity")],
               kwargs.get("center_keys", False), kwargs.get("scale", 1.0), kwargs.get("normalize", False),
               kwargs.get("eps", 1e-6))
    forward = forward_launch(b * h, n, d, v.shape[-1], 1, q.device, policies[0])
    out, state = _linear_attention_fwd(q, k, v, None, None, None, *options, grad is not None, direct_launch=True,
                                       launch=forward)
    if grad is None:
        return out
    backward = backward_launch(b * h, n, d, v.shape[-1], 1, q.device, policies[1])
    dq, dk, dv, *_ = _linear_attention_bwd(grad, q, k, v, None, None, None, options[0], state, *options[1:], False,
                                           direct_launch=True, launch=backward)
    return out, dq, dk, dv


def variant_errors(qkv: torch.Tensor, kwargs: dict, policies: tuple[LaunchPolicy, LaunchPolicy]) -> list[float]:
    """Relative errors of the output and q, k, v gradients launched under ``policies`` against float64."""
    q, k, v = (t.detach() for t in qkv.unbind(2))
    grad = torch.randn(*q.shape[:3], v.shape[-1], device=q.device, dtype=q.dtype)
    got = launched(q, k, v, kwargs, policies, grad)
    ref_in = [t.double().requires_grad_() for t in (q, k, v)]
    ref = linear_attention_reference(*ref_in, **kwargs)
    expected = (ref, *torch.autograd.grad(ref, ref_in, grad.double()))
    return [relative_error(x, r) for x, r in zip(got, expected, strict=True)]


def sweep(bandwidth: float, names: list[str]) -> list[dict]:
    """Device time (graph replay) of the ReLU config under alternative launch policies; forward and gradients are
    checked against float64 first and a variant over the tolerance is reported as such, not timed."""
    rows = []
    for name in names:
        rows += sweep_variant(name, bandwidth)
    return rows


def sweep_variant(name: str, bandwidth: float) -> list[dict]:
    rows = []
    for b, n in SIZES:
        qkv = _inputs(b, n)
        grad = torch.randn(b, n, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
        kwargs = _configs(n, HEAD_DIM)["relu"]
        policies = SWEEP[name]
        errors = {config: max(variant_errors(qkv, config_kwargs, policies))
                  for config, config_kwargs in _configs(n, HEAD_DIM).items()}
        err = max(errors.values())
        row = dict(variant=name, N=n, max_rel_err=err, max_rel_err_by_config=errors)
        rows.append(row)
        if err > TOLERANCE:
            print(f"sweep {name:>9} N={n:>6} MISMATCH rel err {errors}: not timed", flush=True)
            continue

        def fwd(qkv=qkv, kwargs=kwargs, policies=policies):
            return launched(*qkv.detach().unbind(2), kwargs, policies)

        def fwd_bwd(qkv=qkv, kwargs=kwargs, grad=grad, policies=policies):
            return launched(*qkv.detach().unbind(2), kwargs, policies, grad)

        floor = 4 * b * n * HEADS * HEAD_DIM * 2 / bandwidth * 1e3
        row.update(fwd_graph_ms=_bench_graph(fwd), fwdbwd_graph_ms=_bench_graph(fwd_bwd))
        if None in (row["fwd_graph_ms"], row["fwdbwd_graph_ms"]):
            continue
        print(f"sweep {name:>9} N={n:>6} err {err:.1e} fwd {row['fwd_graph_ms']:.4f} ms "
              f"({row['fwd_graph_ms'] / floor:.2f}x) fwd+bwd {row['fwdbwd_graph_ms']:.4f} ms "
              f"({row['fwdbwd_graph_ms'] / (floor * 11 / 4):.2f}x)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/linear_attention/h200.json")
    parser.add_argument("--sweep", nargs="*", choices=sorted(SWEEP), default=None, metavar="VARIANT",
                        help="also time other launch policies (device time): the named ones, or all if none named")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    import triton

    torch.manual_seed(0)
    info = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "sdp_priority_order": [str(b) for b in torch._C._get_sdp_priority_order()],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([sys.executable, *sys.argv]),
        "dtype": "bfloat16",
        "timing": "*_ms: triton.testing.do_bench median (warmup 25 ms, rep 100 ms, L2 flushed), eager launches; "
                  "*_graph_ms: triton.testing.do_bench_cudagraph median (device time, no launch overhead)",
    }
    bandwidth = copy_bandwidth()
    info["copy_bandwidth_GBps"] = bandwidth / 1e9
    print(f"{info['gpu']}  torch {info['torch']}  triton {info['triton']}  cudnn {info['cudnn']}  "
          f"copy {bandwidth / 1e9:.0f} GB/s", flush=True)
    rows = []
    for b, n in SIZES:
        errors = check(b, n)
        row = time_size(b, n, bandwidth)
        row["max_rel_err"] = errors
        rows.append(row)
        print(f"N={n} done: {json.dumps(row)}", flush=True)
    sweep_rows = [] if args.sweep is None else sweep(bandwidth, args.sweep or list(SWEEP))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"info": info, "results": rows, "sweep": sweep_rows}, f, indent=2)

    for suffix, title in (("_ms", "eager (do_bench)"), ("_graph_ms", "CUDA-graph replay (device time)")):
        print(f"\n{title}: ms fwd/fwd+bwd; x floor and sdpa/relu are ratios")
        header = (f"{'N':>6} {'B':>4} | {'floor f/fb':>13} | {'relu f/fb':>13} {'x floor':>11} | {'inline f/fb':>13} "
                  f"| {'ref f/fb':>13} | {'sdpa f/fb':>13} | {'sdpa/relu':>11}")
        print(header)
        print("-" * len(header))
        for r in rows:
            t = {key: r.get(f"{key}{suffix}") or float("nan") for key in (
                "triton_relu_fwd", "triton_relu_fwdbwd", "triton_inline_fwd", "triton_inline_fwdbwd",
                "reference_relu_fwd", "reference_relu_fwdbwd", "sdpa_fwd", "sdpa_fwdbwd")}
            print(f"{r['N']:>6} {r['B']:>4} | {r['floor_fwd_ms']:6.3f}/{r['floor_fwdbwd_ms']:6.3f} | "
                  f"{t['triton_relu_fwd']:6.3f}/{t['triton_relu_fwdbwd']:6.3f} "
                  f"{t['triton_relu_fwd'] / r['floor_fwd_ms']:5.2f}/"
                  f"{t['triton_relu_fwdbwd'] / r['floor_fwdbwd_ms']:5.2f} | "
                  f"{t['triton_inline_fwd']:6.3f}/{t['triton_inline_fwdbwd']:6.3f} | "
                  f"{t['reference_relu_fwd']:6.3f}/{t['reference_relu_fwdbwd']:6.3f} | "
                  f"{t['sdpa_fwd']:6.3f}/{t['sdpa_fwdbwd']:6.3f} | "
                  f"{t['sdpa_fwd'] / t['triton_relu_fwd']:5.2f}/{t['sdpa_fwdbwd'] / t['triton_relu_fwdbwd']:5.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
