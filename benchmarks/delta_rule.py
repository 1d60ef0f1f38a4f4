"""Bidirectional delta rule on the GPU: vitzoo's Triton kernel vs fla's causal ``chunk_delta_rule`` vs PyTorch.

Shapes are ViT-like (H=6, d=64, bf16, B*N ~ 50k tokens). Ours runs BOTH scan directions (the bidirectional op);
fla runs ONE causal direction (its ``chunk_delta_rule`` with the L2 norm fused); the PyTorch row is
``delta_rule_bidirectional_reference`` (the chunked reference, both directions). Before timing, our forward scan
(one direction) and its gradients are checked against fla's on identical inputs; on a mismatch nothing is timed
and the script exits non-zero.

    python benchmarks/delta_rule.py [--out benchmarks/results/delta_rule/h200.json]

The run also times the inference forward at DeltaNet-T's own shapes (``inference``: H=3, the comparison's batches
at 224 / 512 / 1024 px) under launch settings that change it; ``--inference-only`` times just that.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vitzoo.bench.common import git_revision, write_json  # noqa: E402
from vitzoo.ops import delta_rule as dr  # noqa: E402
from vitzoo.ops.delta_rule.function import _delta_rule_bwd, _delta_rule_fwd, _delta_rule_infer  # noqa: E402
from vitzoo.ops.delta_rule.heuristics import DEFAULT_LAUNCH, LaunchSettings  # noqa: E402
from vitzoo.ops.testing import relative_error  # noqa: E402

SHAPES = [(256, 197), (64, 785), (16, 3137), (4, 12545)]  # (B, N)
# Launch alternatives timed beside the defaults (vitzoo.ops.delta_rule.heuristics.LaunchSettings: chunk, num_warps,
# wy_num_warps, grads_num_warps, seq_bv_max, seq_bv_min). A variant is timed only if it passes its float64 check first.
VARIANTS: dict[str, LaunchSettings] = {
    "grads_w8": LaunchSettings(grads_num_warps=8),
    "seq_bv16": LaunchSettings(seq_bv_min=16),
    "seq_bv64": LaunchSettings(seq_bv_min=64),  # the recurrences never split the value dim
    "c16": LaunchSettings(chunk=16),
    "warps2": LaunchSettings(num_warps=2),  # the recurrences and the output kernel
    "warps8": LaunchSettings(num_warps=8),
    "wy_w4": LaunchSettings(wy_num_warps=4),
}
HEADS, HEAD_DIM = 6, 64
# The inference forward (no gradients: what a model's evaluation runs) at DeltaNet-T's layers, 3 heads of 64 as views
# of one fused qkv, at 224 / 512 / 1024 px with the side-by-side comparison's batches (B, N), under the defaults and
# these settings, beside the training forward.
INFERENCE_SHAPES = [(256, 197), (49, 1025), (12, 4097)]
INFERENCE_HEADS = 3
INFERENCE_VARIANTS: dict[str, LaunchSettings] = {
    "chunk32": LaunchSettings(inference_chunk=32),
    "chunk64": LaunchSettings(inference_chunk=64),
    "warps2": LaunchSettings(num_warps=2),
    "warps8": LaunchSettings(num_warps=8),
    "one_pass_always": LaunchSettings(one_pass_fill=0),
}
CHECK_TOL = 2e-2  # relative L2 error between two bf16 implementations of the same scan


def make_inputs(b: int, n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator(device="cuda").manual_seed(seed)
    shape = (b, n, HEADS, HEAD_DIM)
    q, k, v = (torch.randn(shape, generator=g, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    beta = torch.sigmoid(torch.randn(shape[:3], generator=g, device="cuda")).bfloat16()
    return [q, k, v, beta]


def fla_scan(q, k, v, beta):
    from fla.ops.delta_rule import chunk_delta_rule

    return chunk_delta_rule(q, k, v, beta, use_qk_l2norm_in_kernel=True)[0]


def ours_forward_scan(q, k, v, beta):
    return dr.delta_rule_triton(q, k, v, beta, qk_l2norm=True, directions="forward")


def ours_bidirectional(q, k, v, beta):
    return dr.delta_rule_triton(q, k, v, beta, qk_l2norm=True, directions="both")


def ours_training_forward(q, k, v, beta):
    """Our bidirectional forward as training runs it: the WY, states and output kernels, writing W, U, T, the states
    and V' for the backward (inference runs the recurrence and the output as one kernel and writes none of them)."""
    return _delta_rule_fwd(q, k, v, beta, q.shape[-1] ** -0.5, True, 0, 2, direct_launch=True)[0]


class _Launched(torch.autograd.Function):
    """Our bidirectional op (L2 norm fused, scale d^-1/2) with its host launches called under explicit settings:
    the library's eager path (direct launches inside an autograd function), so variants time like the op."""

    @staticmethod
    def forward(ctx, q, k, v, beta, launch: LaunchSettings):
        o, *saved = _delta_rule_fwd(q, k, v, beta, q.shape[-1] ** -0.5, True, 0, 2, direct_launch=True,
                                    launch=launch)
        ctx.save_for_backward(q, k, v, beta, *saved)
        ctx.launch = launch
        return o

    @staticmethod
    def backward(ctx, grad):
        q, k, v, beta, *saved = ctx.saved_tensors
        if grad.stride(-1) != 1:  # the kernels need a unit stride on the head dim, as in the op
            grad = grad.contiguous()
        grads = _delta_rule_bwd(q, k, v, beta, grad, *saved, q.shape[-1] ** -0.5, True, 0, 2,
                                direct_launch=True, launch=ctx.launch)
        return (*grads, None)


def ours_launched(launch: LaunchSettings) -> Callable[..., torch.Tensor]:
    """:func:`ours_bidirectional` launched under ``launch``; without gradients a forward that saves nothing for the
    backward, as the op's."""

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, beta)):
            return _Launched.apply(q, k, v, beta, launch)
        return _delta_rule_infer(q, k, v, beta, q.shape[-1] ** -0.5, True, 0, 2, direct_launch=True, launch=launch)
    return fn


def inference_rows() -> list[dict]:
    """The inference forward under the defaults and each of INFERENCE_VARIANTS, and the training forward (which
    writes what the backward reads), at INFERENCE_SHAPES: CUDA-graph median ms, and the relative error of each
    output against the float64 reference on its first two images."""
    import triton

    rows = []
    for b, n in INFERENCE_SHAPES:
        g = torch.Generator(device="cuda").manual_seed(n)
        qkv = torch.randn(b, n, 3, INFERENCE_HEADS, HEAD_DIM, generator=g, device="cuda", dtype=torch.bfloat16)
        q, k, v = qkv.unbind(2)
        beta = torch.sigmoid(torch.randn(b, n, INFERENCE_HEADS, generator=g, device="cuda")).bfloat16()
        ref = dr.delta_rule_bidirectional_reference(*(t[:2].double() for t in (q, k, v, beta)))
        row: dict = {"B": b, "N": n, "H": INFERENCE_HEADS,
                     "one_pass": dr.heuristics.one_pass_inference(b * INFERENCE_HEADS, HEAD_DIM, q.device)}
        runs = {"default": (DEFAULT_LAUNCH, False)}
        runs |= {name: (launch, False) for name, launch in INFERENCE_VARIANTS.items()}
        runs["training_fwd"] = (DEFAULT_LAUNCH, True)
        for name, (launch, store) in runs.items():
            def forward(launch=launch, store=store, inputs=(q, k, v, beta)):
                run = _delta_rule_fwd if store else _delta_rule_infer
                out = run(*inputs, HEAD_DIM ** -0.5, True, 0, 2, direct_launch=True, launch=launch)
                return out[0] if store else out
            error = relative_error(forward()[:2], ref)
            ms = triton.testing.do_bench_cudagraph(forward, rep=100, return_mode="median")
            row[name] = {"ms": round(ms, 4), "rel_err": float(f"{error:.2e}")}
            print(f"inference B={b} N={n} {name}: {row[name]}", flush=True)
        rows.append(row)
    return rows


def changed_settings(launch: LaunchSettings) -> dict[str, int]:
    """The fields of ``launch`` that differ from the defaults (a variant as recorded in the JSON)."""
    defaults = dataclasses.asdict(DEFAULT_LAUNCH)
    return {name: value for name, value in dataclasses.asdict(launch).items() if value != defaults[name]}


def check_variant(fn, b: int, n: int) -> dict[str, float]:
    """A bidirectional variant vs the float64 chunked reference (output and the four gradients)."""
    inputs = make_inputs(b, n, seed=7 * n)
    grad = torch.randn(b, n, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    ours = outputs_and_grads(fn, inputs, grad)
    ref = outputs_and_grads(dr.delta_rule_bidirectional_reference, [t.double() for t in inputs], grad.double())
    return {x: relative_error(a, c) for x, a, c in zip(["o", "dq", "dk", "dv", "dbeta"], ours, ref, strict=True)}


def torch_bidirectional(q, k, v, beta):
    return dr.delta_rule_bidirectional_reference(q, k, v, beta, qk_l2norm=True)


def outputs_and_grads(fn, inputs, grad):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    out.backward(grad)
    return [out] + [t.grad for t in leaves]


def check_against_fla(b: int, n: int) -> dict[str, float]:
    """Our one-direction scan vs fla's, forward and the four gradients; also both vs a float64 reference."""
    inputs = make_inputs(b, n, seed=n)
    grad = torch.randn(b, n, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    ours = outputs_and_grads(ours_forward_scan, inputs, grad)
    fla = outputs_and_grads(fla_scan, inputs, grad)
    names = ["o", "dq", "dk", "dv", "dbeta"]
    errors = {f"ours_vs_fla_{x}": relative_error(a, c) for x, a, c in zip(names, ours, fla, strict=True)}
    exact = [t.double() for t in inputs]
    ref = outputs_and_grads(lambda q, k, v, beta: dr.delta_rule_chunked_reference(
        dr.l2_normalize(q), dr.l2_normalize(k), v, beta), exact, grad.double())
    errors |= {f"ours_vs_f64_{x}": relative_error(a, c) for x, a, c in zip(names, ours, ref, strict=True)}
    errors |= {f"fla_vs_f64_{x}": relative_error(a, c) for x, a, c in zip(names, fla, ref, strict=True)}
    return errors


def fwd_bwd_step(fn, inputs):
    """One forward+backward of ``fn`` on fresh leaf copies of ``inputs``, with all four input gradients."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    grad = torch.randn_like(inputs[2])

    def step():
        for t in leaves:
            t.grad = None
        fn(*leaves).backward(grad)
    return step


def time_ms(fn, inputs, backward: bool, graph: bool = False) -> float | None:
    """Median ms of ``fn`` (forward under no_grad, or forward+backward): eager launches with do_bench, or with
    ``graph`` the replay of a CUDA graph (device time without host overhead; None if the capture fails)."""
    import triton

    if backward:
        step = fwd_bwd_step(fn, inputs)
    else:
        def step():
            with torch.no_grad():
                fn(*inputs)
    if graph:
        step()  # compile and autotune outside the capture
        try:
            return triton.testing.do_bench_cudagraph(step, rep=50, return_mode="median")
        except RuntimeError as exc:
            print(f"graph capture failed: {str(exc).splitlines()[0][:200]}", flush=True)
            return None
    return triton.testing.do_bench(step, warmup=10, rep=50, return_mode="median")


def kernel_times(fn, inputs, reps: int = 5) -> dict[str, float]:
    """Mean device ms per call of every kernel in one forward+backward (torch.profiler, after a warm-up call)."""
    from torch.profiler import ProfilerActivity, profile

    step = fwd_bwd_step(fn, inputs)
    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            step()
        torch.cuda.synchronize()
    times: dict[str, float] = {}
    for event in prof.key_averages():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            times[event.key] = round(event.device_time_total / 1000 / reps, 4)
    return dict(sorted(times.items(), key=lambda kv: -kv[1]))


def versions() -> dict[str, str]:
    import triton

    try:
        import fla

        fla_version = getattr(fla, "__version__", "unknown")
    except ImportError:
        fla_version = "missing"
    return {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "fla": fla_version,
        "cuda": torch.version.cuda,
    }


def provenance() -> dict[str, str]:
    """Versions, date, command and the checkout's git revision (:func:`vitzoo.bench.common.git_revision`)."""
    return {**versions(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv), "git_revision": git_revision()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/delta_rule/h200.json")
    parser.add_argument("--skip-torch", action="store_true", help="do not time the PyTorch reference")
    parser.add_argument("--variants", nargs="*", choices=sorted(VARIANTS), default=sorted(VARIANTS),
                        help="launch variants to check and time besides the default (default: all; none: just ours)")
    parser.add_argument("--check-variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--inference-only", action="store_true",
                        help="time only the inference forward at DeltaNet-T's shapes (no fla, no backward)")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    if args.inference_only:
        variants = {name: changed_settings(launch) for name, launch in INFERENCE_VARIANTS.items()}
        _write(args.out, {**provenance(), "dtype": "bfloat16", "head_dim": HEAD_DIM, "inference_variants": variants,
                          "inference": inference_rows()})
        return 0
    if args.check_variant:  # child mode: print the variant's errors against float64 as one JSON line
        try:
            fn = ours_launched(VARIANTS[args.check_variant])
            errors = {str(n): check_variant(fn, b, n) for b, n in ((4, 197), (1, 3137))}
        except Exception as e:  # a launch setting the compiler cannot handle is reported, not timed
            errors = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
        print(json.dumps(errors))
        return 0
    result = {
        **provenance(),
        "heads": HEADS, "head_dim": HEAD_DIM, "dtype": "bfloat16",
        "note": "ours = bidirectional (both scan directions, one launch); fla = chunk_delta_rule, causal, one "
                "direction, use_qk_l2norm_in_kernel=True; torch = delta_rule_bidirectional_reference (chunked). "
                "Median ms of triton.testing.do_bench (eager); *_graph_ms: CUDA-graph replay (device time). "
                "fwd under no_grad (the inference path); ours_training_fwd: the forward that writes what the "
                "backward reads, also under no_grad; fwd+bwd with all four input grads. "
                "Variant columns: our op with other launch settings (the fields changed in 'variants'), checked "
                "against float64 before timing.",
        "variants": {name: changed_settings(VARIANTS[name]) for name in args.variants},
        "variant_checks": {}, "checks": {}, "rows": [],
    }
    usable: dict[str, LaunchSettings] = {}
    for name in args.variants:
        # Each check runs in a child process: an illegal memory access would poison this process's CUDA context.
        child = subprocess.run([sys.executable, os.path.abspath(__file__), "--check-variant", name],
                               capture_output=True, text=True, timeout=300)
        try:
            errors = json.loads(child.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            errors = {"error": (child.stdout + child.stderr)[-300:]}
        result["variant_checks"][name] = errors
        good = "error" not in errors and all(e <= 1e-2 for d in errors.values() for e in d.values())
        print(f"variant {name}: {'ok' if good else 'REJECTED'} {errors}", flush=True)
        if good:
            usable[name] = VARIANTS[name]

    _write(args.out, result)  # written after every stage: a run cut off by its time limit keeps what it measured

    ok = True
    for b, n in SHAPES:
        errors = check_against_fla(min(b, 8), n)
        result["checks"][str(n)] = errors
        bad = {k: e for k, e in errors.items() if k.startswith("ours_vs_fla") and not e <= CHECK_TOL}
        print(f"check N={n}: " + " ".join(f"{k.removeprefix('ours_vs_')}={e:.1e}" for k, e in errors.items()
                                           if k.startswith("ours_vs")), flush=True)
        if bad:
            print(f"MISMATCH against fla at N={n}: {bad}", flush=True)
            ok = False
    if not ok:
        result["error"] = "our scan does not match fla's; no timings reported"
        _write(args.out, result)
        return 1
    _write(args.out, result)

    for b, n in SHAPES:
        inputs = make_inputs(b, n, seed=1000 + n)
        row = {"B": b, "N": n}
        # our op under each launch setting (the defaults first, through the public op)
        ours_runs = {"ours": ours_bidirectional, **{name: ours_launched(cfg) for name, cfg in usable.items()}}
        runs = [("ours", ours_bidirectional), ("fla", fla_scan)]
        runs += [(name, fn) for name, fn in ours_runs.items() if name != "ours"]
        if not args.skip_torch:
            runs.append(("torch", torch_bidirectional))
        for name, fn in runs:
            row[f"{name}_fwd_ms"] = time_ms(fn, inputs, backward=False)
            row[f"{name}_fwdbwd_ms"] = time_ms(fn, inputs, backward=True)
        for name, fn in runs:  # device time (host overhead is large here), all but the PyTorch reference
            if name == "torch":
                continue
            row[f"{name}_fwd_graph_ms"] = time_ms(fn, inputs, backward=False, graph=True)
            row[f"{name}_fwdbwd_graph_ms"] = time_ms(fn, inputs, backward=True, graph=True)
        row["ours_training_fwd_ms"] = time_ms(ours_training_forward, inputs, backward=False)
        row["ours_training_fwd_graph_ms"] = time_ms(ours_training_forward, inputs, backward=False, graph=True)
        for name, fn in ours_runs.items():
            row[f"{name}_kernels_ms"] = kernel_times(fn, inputs)
        for kind in ("fwd", "fwdbwd"):
            row[f"ours_over_fla_{kind}"] = row[f"ours_{kind}_ms"] / row[f"fla_{kind}_ms"]
            if row[f"ours_{kind}_graph_ms"] and row[f"fla_{kind}_graph_ms"]:
                row[f"ours_over_fla_{kind}_graph"] = row[f"ours_{kind}_graph_ms"] / row[f"fla_{kind}_graph_ms"]
        if usable:
            best = min(usable, key=lambda v: row[f"{v}_fwdbwd_graph_ms"] or float("inf"))
            row["best_variant"] = best
            if row[f"{best}_fwdbwd_graph_ms"] and row["fla_fwdbwd_graph_ms"]:
                row["best_over_fla_fwdbwd_graph"] = row[f"{best}_fwdbwd_graph_ms"] / row["fla_fwdbwd_graph_ms"]
        result["rows"].append(row)
        _write(args.out, result)
        print({k: (round(x, 4) if isinstance(x, float) else x) for k, x in row.items()}, flush=True)
        del inputs
        torch.cuda.empty_cache()

    result["inference_variants"] = {name: changed_settings(launch) for name, launch in INFERENCE_VARIANTS.items()}
    result["inference"] = inference_rows()
    _write(args.out, result)

    print(f"\n{result['gpu']}  torch {result['torch']}  triton {result['triton']}  fla {result['fla']}  bf16 H=6 d=64")
    head = f"{'N':>6} {'B':>4} | {'ours fwd':>9} {'fla fwd':>8} {'ratio':>6} | "
    head += f"{'ours f+b':>9} {'fla f+b':>8} {'ratio':>6}"
    if not args.skip_torch:
        head += f" | {'torch fwd':>9} {'torch f+b':>9}"
    print(head)
    for r in result["rows"]:
        line = (f"{r['N']:>6} {r['B']:>4} | {r['ours_fwd_ms']:>9.3f} {r['fla_fwd_ms']:>8.3f} "
                f"{r['ours_over_fla_fwd']:>6.2f} | {r['ours_fwdbwd_ms']:>9.3f} {r['fla_fwdbwd_ms']:>8.3f} "
                f"{r['ours_over_fla_fwdbwd']:>6.2f}")
        if not args.skip_torch:
            line += f" | {r['torch_fwd_ms']:>9.3f} {r['torch_fwdbwd_ms']:>9.3f}"
        print(line)
    print("ratio = ours (both directions) / fla (one causal direction); < 1 means ours is faster")
    print(f"\ndevice time (CUDA graphs)\n{'N':>6} | {'ours fwd':>9} {'fla fwd':>8} {'ratio':>6} | "
          f"{'ours f+b':>9} {'fla f+b':>8} {'ratio':>6}")
    for r in result["rows"]:
        if r.get("ours_over_fla_fwd_graph") and r.get("ours_over_fla_fwdbwd_graph"):
            print(f"{r['N']:>6} | {r['ours_fwd_graph_ms']:>9.3f} {r['fla_fwd_graph_ms']:>8.3f} "
                  f"{r['ours_over_fla_fwd_graph']:>6.2f} | {r['ours_fwdbwd_graph_ms']:>9.3f} "
                  f"{r['fla_fwdbwd_graph_ms']:>8.3f} {r['ours_over_fla_fwdbwd_graph']:>6.2f}")
    for r in result["rows"]:
        if "best_over_fla_fwdbwd_graph" in r:
            best = r["best_variant"]
            print(f"N={r['N']}: fastest fwd+bwd variant (device time) {best} {r[best + '_fwdbwd_graph_ms']:.3f} ms "
                  f"(fwd {r[best + '_fwd_graph_ms']:.3f}), {r['best_over_fla_fwdbwd_graph']:.2f}x fla")
    return 0


def _write(path: str, result: dict) -> None:
    """Replace the JSON at ``path`` atomically (rewritten after every stage of the run)."""
    write_json(Path(path), result)
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
