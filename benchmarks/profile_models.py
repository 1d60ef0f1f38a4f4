"""Where a whole model's time goes (GPU): host time per step, device time, launches, top kernels, host hot spots.

For each model, one eager bf16-autocast inference forward (and optionally one AdamW training step):

- ``host_ms``: wall time to enqueue one step after a sync, without waiting for the device (median of repeats);
- ``host_ms_behind_busy_device``: the same, enqueued behind ``--busy-ms`` of queued device work (a sleep kernel):
  a step that waits for the device anywhere (a synchronising call, a pageable copy) takes up to that much longer,
  one that only enqueues takes as long as ``host_ms``; ``sync_warnings``: what
  ``torch.cuda.set_sync_debug_mode('warn')`` reports about one step (the synchronising calls PyTorch knows of);
- ``device_ms``, ``launches``: summed kernel time and kernel count per step from ``torch.profiler``;
- ``kernels``: the kernels taking the most device time, with calls per step; ``copies``: the dtype-cast and
  layout copies among them (``copy``/``cast`` kernels);
- ``host_profile``: cProfile of a few steps, sorted by own time and by cumulative time (what the Python side
  spends its time on);
- ``graph_capture``: whether forward (+ backward for training) captures into a CUDA graph and replays;
- with ``--train --cuda-graph``, ``train_cuda_graph``: the same measures of train.py's ``cuda_graph=true`` step
  (forward and backward replayed from CUDA graphs, cross-entropy and AdamW eager), where the host time left is the
  loss, the backward's bookkeeping and the optimizer.

    python benchmarks/profile_models.py --models softmax_deit_tiny_patch16_224 linear_deit_tiny_patch16_224 \\
        --out profile.json
"""
from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
import warnings

import timm
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import vitzoo  # noqa: E402,F401  (registers the models)
from vitzoo.train.cuda_graph import graphed_training_forward  # noqa: E402

_COPY_WORDS = ("copy", "cast", "to_copy", "contiguous")


def _kernel_stats(prof, steps: int, top: int) -> dict:
    rows = []
    for event in prof.key_averages():
        device_us = getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)
        if device_us <= 0 or event.key.startswith(("aten::", "cuda", "Memcpy", "Memset")) and device_us == 0:
            continue
        if event.device_type is not None and "CUDA" not in str(event.device_type):
            continue
        rows.append((event.key, device_us / steps, event.count / steps))
    rows.sort(key=lambda r: -r[1])
    copies = [r for r in rows if any(w in r[0].lower() for w in _COPY_WORDS)]
    return {
        "device_ms": round(sum(r[1] for r in rows) / 1e3, 4),
        "launches": round(sum(r[2] for r in rows), 1),
        "copy_ms": round(sum(r[1] for r in copies) / 1e3, 4),
        "copy_launches": round(sum(r[2] for r in copies), 1),
        "kernels": [{"name": r[0][:140], "us": round(r[1], 1), "calls": round(r[2], 1)} for r in rows[:top]],
    }


def _host_profile(step, steps: int, top: int) -> str:
    profiler = cProfile.Profile()
    torch.cuda.synchronize()
    profiler.enable()
    for _ in range(steps):
        step()
    profiler.disable()
    torch.cuda.synchronize()
    listings = []
    for key in ("tottime", "cumulative"):  # own time finds hot functions, cumulative time the callers behind them
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats(key).print_stats(top)
        listings += [line[:200] for line in text.getvalue().splitlines()[:top + 12]]
    return "\n".join(listings)


def _sleep_cycles_per_ms() -> float:
    """GPU clock cycles per millisecond of ``torch.cuda._sleep``, measured."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    cycles = 10_000_000
    torch.cuda._sleep(cycles // 10)  # warm
    start.record()
    torch.cuda._sleep(cycles)
    end.record()
    torch.cuda.synchronize()
    return cycles / start.elapsed_time(end)


def _waits_for_device(step, args) -> dict:
    """Host time to enqueue ``step`` behind ``args.busy_ms`` of queued device work, and the synchronising calls
    PyTorch reports for one step."""
    cycles = int(args.busy_ms * _sleep_cycles_per_ms())
    behind = []
    for _ in range(3):
        torch.cuda.synchronize()
        torch.cuda._sleep(cycles)
        start = time.perf_counter()
        step()
        behind.append((time.perf_counter() - start) * 1e3)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    # the first use of the debug mode also warns that it is a prototype: that notice is not a synchronising call
    reported = sorted({" ".join(str(w.message).split())[:160] for w in caught
                       if "synchroniz" in str(w.message) and "debug mode is a prototype" not in str(w.message)})
    return {"host_ms_behind_busy_device": round(statistics.median(behind), 3), "sync_warnings": reported}


def _measure(step, args) -> dict:
    for _ in range(args.warm):
        step()
    torch.cuda.synchronize()
    host = []
    for _ in range(args.repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        host.append((time.perf_counter() - start) * 1e3)
    torch.cuda.synchronize()
    start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start_event.record()
    for _ in range(args.repeats):
        step()
    end_event.record()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(args.profile_steps):
            step()
        torch.cuda.synchronize()
    result = {"host_ms": round(statistics.median(host), 3),
              "wall_ms": round(start_event.elapsed_time(end_event) / args.repeats, 3)}
    result.update(_waits_for_device(step, args))
    result.update(_kernel_stats(prof, args.profile_steps, args.top))
    result["host_profile"] = _host_profile(step, args.profile_steps, args.top)
    return result


def _graph_capture(model, x, train: bool) -> str:
    try:
        static_x = x.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    out = model(static_x)
                if train:
                    out.float().sum().backward()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
                out = model(static_x)
            if train:
                out.float().sum().backward()
        graph.replay()
        torch.cuda.synchronize()
        return "ok"
    except Exception as error:  # report, do not stop the run
        torch.cuda.synchronize()
        return f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"


def profile_model(name: str, args) -> dict:
    torch.manual_seed(0)
    kwargs = {"img_size": args.img_size} if "qtvit" not in name and "efficientvit" not in name else {}
    with torch.device("cuda"):
        model = timm.create_model(name, **kwargs)
    model = model.cuda().eval()
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device="cuda")
    result = {"model": name}

    def infer():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return model(x)

    with torch.inference_mode():
        result["infer"] = _measure(infer, args)
    with torch.no_grad():
        result["infer"]["graph_capture"] = _graph_capture(model, x, train=False)
    if args.train:
        xt = x[:args.train_batch_size].clone()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as train.py builds it on a GPU
        target = torch.randint(0, 1000, (xt.shape[0],), device="cuda")
        model.train()

        def eager_forward(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return model(x).float()

        def training_step(forward):
            def step():
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(forward(xt), target).backward()
                optimizer.step()
            return step

        result["train"] = _measure(training_step(eager_forward), args)
        optimizer.zero_grad(set_to_none=True)
        result["train"]["graph_capture"] = _graph_capture(model, xt, train=True)
        if args.cuda_graph:
            # train.py's cuda_graph=true step: forward and backward replayed, loss and AdamW eager
            graphed = graphed_training_forward(model, xt, torch.bfloat16)
            result["train_cuda_graph"] = _measure(training_step(graphed), args)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--train-batch-size", type=int, default=128)
    parser.add_argument("--train", action="store_true", help="also profile an AdamW training step")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="with --train, also a step whose forward and backward replay CUDA graphs (train.py's "
                             "cuda_graph=true)")
    parser.add_argument("--warm", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--busy-ms", type=float, default=30.0,
                        help="device work queued ahead of the step that host_ms_behind_busy_device is timed behind")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True  # as vitzoo-bench and timm's benchmark: fixed shapes, cuDNN picks algorithms
    revision = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    info = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "timm": timm.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv), "git_revision": revision}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        pass
    results = []
    for name in args.models:
        results.append(profile_model(name, args))
        r = results[-1]["infer"]
        print(f"{name:40s} host {r['host_ms']:7.2f} ms (behind busy device {r['host_ms_behind_busy_device']:.2f}, "
              f"{len(r['sync_warnings'])} sync warnings)  device {r['device_ms']:7.2f} ms  "
              f"wall {r['wall_ms']:7.2f} ms  "
              f"launches {r['launches']:6.0f}  copies {r['copy_launches']:5.0f} ({r['copy_ms']:.2f} ms)  "
              f"graph {r['graph_capture'][:40]}", flush=True)
        with open(args.out, "w") as f:
            json.dump({"info": info, "models": results}, f, indent=1)


if __name__ == "__main__":
    main()
