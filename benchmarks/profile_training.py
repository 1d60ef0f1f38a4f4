"""Where train.py's own step time goes: each stage's host and device time per update, in a real training run.

Runs ``train.py`` (its ``--config``, ``--data-dir`` and ``key=value`` overrides) in this process for ``--warm`` +
``--steps`` optimizer updates and profiles the last ``--steps`` with ``torch.profiler`` (started and stopped by an
optimizer-step hook, so the model build, the CUDA-graph capture and kernel tuning stay outside). It reads the ranges
that the training loop and its decode-ahead and augment-ahead threads mark
(``vitzoo.train.device_decode.PROFILE_RANGES``), per update between the first and the last profiled step range (a
range or kernel counts where it starts):

- ``wall_ms``: median time from one update's step range to the next one's (the run's pace);
- per stage (``load``: the loader's batch, JPEG batches only; ``decode``; ``augment``: the device stage and mixup;
  ``step``: forward, backward, optimizer; for JPEG batches ``load`` and ``decode`` run in the decode-ahead thread and
  ``augment`` in the augment-ahead thread):
  ``host_ms``, the range's wall time on its thread per update (including waits for the GIL and for the device), and
  ``device_ms``, the kernels launched inside it per update;
- ``loop_other_ms``: ``wall_ms`` less the training thread's stages (the loop waiting for its next batch, and its
  bookkeeping);
- ``device_busy_ms``: per update, the time at least one kernel ran (kernels of several streams overlapping count
  once); ``device_kernel_ms``: their summed time; ``kernels``: the ones taking the most time, with calls per update.

The profiler's own cost is in these numbers (it records every op and kernel), so the pace is somewhat slower than an
unprofiled run's; the stages' shares are what to read. The run writes into a temporary folder (evaluating
``val_subset=256`` images at its end) and is deleted afterwards::

    python benchmarks/profile_training.py --config configs/fashion_imagenet/softmax.yaml --data-dir data/fim \\
        --out benchmarks/results/profile_training/h100.json \\
        -- workers=12 decode_on_device=true augment_on_device=true cuda_graph=true
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.profiler import ProfilerActivity, _ExperimentalConfig, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vitzoo.bench.common import environment, git_revision, merge_run, write_json  # noqa: E402
from vitzoo.train.config import ConfigError, first_line, load_config  # noqa: E402
from vitzoo.train.device_decode import PROFILE_RANGES  # noqa: E402
from vitzoo.train.loop import train  # noqa: E402

# a results file holds one run per config file, model and overrides
RUN_KEY = ("config_file", "model", "overrides")


def _on_gpu(event: Any) -> bool:
    return event.device_type is not None and "CUDA" in str(event.device_type)


def _is_kernel(event: Any) -> bool:
    # a range also shows on the GPU's timeline, as an annotation spanning the kernels launched inside it
    return _on_gpu(event) and not getattr(event, "is_user_annotation", False)


def _union_us(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of ``(start, end)`` intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def summarise(events: list[Any], batch: int, top: int = 20) -> dict[str, Any]:
    """The per-update stage table of profiler ``events`` (``prof.events()``) of training steps of ``batch`` images:
    over the updates from the first step range's start to the last one's, each range and kernel counted by its
    start."""
    names = {label: name for name, label in PROFILE_RANGES.items()}
    ranges = [event for event in events if event.name in names and not _on_gpu(event)]
    starts = sorted(event.time_range.start for event in ranges if names[event.name] == "step")
    if len(starts) < 3:
        raise ValueError(f"the profile holds {len(starts)} step range(s); profile at least 3 updates")
    begin, end, updates = starts[0], starts[-1], len(starts) - 1

    def inside(event: Any) -> bool:
        return begin <= event.time_range.start < end

    wall_us = statistics.median(after - before for before, after in zip(starts, starts[1:], strict=False))
    # the training thread: the one whose ranges include the steps (JPEG batches' other stages run in others)
    training_threads = {event.thread for event in ranges if names[event.name] == "step"}
    stages: dict[str, dict[str, float]] = {}
    main_thread_ms = 0.0
    for event in filter(inside, ranges):
        stage = stages.setdefault(names[event.name], {"ranges": 0, "host_ms": 0.0, "device_ms": 0.0})
        stage["ranges"] += 1
        stage["host_ms"] += event.time_range.elapsed_us() / updates / 1e3
        stage["device_ms"] += event.device_time_total / updates / 1e3
        if event.thread in training_threads:
            main_thread_ms += event.time_range.elapsed_us() / updates / 1e3
    stages = {name: {key: round(value, 3) for key, value in stages[name].items()}
              for name in PROFILE_RANGES if name in stages}
    kernels = [event for event in events if _is_kernel(event) and inside(event)]
    per_kernel: dict[str, list[float]] = {}
    for event in kernels:
        per_kernel.setdefault(event.name, []).append(event.time_range.elapsed_us())
    ranked = sorted(per_kernel.items(), key=lambda item: -sum(item[1]))
    return {
        "updates": updates,
        "wall_ms": round(wall_us / 1e3, 3),
        "img_per_s_from_wall": round(batch / (wall_us / 1e6), 1),
        "stages": stages,
        "loop_other_ms": round(wall_us / 1e3 - main_thread_ms, 3),
        "device_busy_ms": round(_union_us([(e.time_range.start, e.time_range.end) for e in kernels])
                                / updates / 1e3, 3),
        "device_kernel_ms": round(sum(e.time_range.elapsed_us() for e in kernels) / updates / 1e3, 3),
        "launches": round(len(kernels) / updates, 1),
        "kernels": [{"name": name[:140], "ms": round(sum(times) / updates / 1e3, 4),
                     "calls": round(len(times) / updates, 2)} for name, times in ranked[:top]],
    }


class _ProfileUpdates:
    """An optimizer-step hook that starts ``profiler`` after ``warm`` updates and stops it ``steps`` updates later."""

    def __init__(self, profiler: profile, warm: int, steps: int) -> None:
        self.profiler, self.warm, self.steps, self.updates = profiler, warm, steps, 0
        self.started = self.stopped = False

    def __call__(self, *_: Any) -> None:
        self.updates += 1
        if self.updates == self.warm:
            self.profiler.start()
            self.started = True
        elif self.updates == self.warm + self.steps and self.started:
            self.profiler.stop()
            self.stopped = True


def profile_run(config_path: str | None, data_dir: str | None, overrides: list[str], warm: int, steps: int,
                top: int = 20, trace: Path | None = None) -> dict[str, Any]:
    """Train ``warm + steps + 1`` updates of the given run in a temporary folder; return :func:`summarise` of the
    profiled ``steps`` updates with the run's configuration. ``trace``: also write their timeline there (Chrome
    trace format, gzipped; chrome://tracing or Perfetto open it), where gaps in the GPU's work show."""
    if warm < 1 or steps < 4:
        raise ValueError(f"--warm takes at least 1 and --steps at least 4 updates, got {warm} and {steps}")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    # every thread's ranges: the decode-ahead and augment-ahead threads run before the profiler starts, and a
    # profiler started on one thread otherwise records only that thread (and the autograd threads it hands its state
    # to)
    profiler = profile(activities=activities,
                       experimental_config=_ExperimentalConfig(profile_all_threads=True))
    hook = _ProfileUpdates(profiler, warm, steps)
    with tempfile.TemporaryDirectory() as folder:
        config = load_config(config_path, [*overrides, f"max_steps={warm + steps + 1}", "progress=false",
                                           "val_subset=256", "checkpoint_interval=0"],
                             data_dir=data_dir, output=str(Path(folder) / "run"))
        handle = register_optimizer_step_post_hook(hook)
        try:
            train(config)
        finally:
            handle.remove()
            if hook.started and not hook.stopped:
                profiler.stop()
    if not hook.stopped:
        raise RuntimeError(f"the run ended after {hook.updates} updates, before the {warm + steps} to profile; "
                           "give it more data or epochs")
    if trace is not None:
        with tempfile.TemporaryDirectory() as folder:
            plain = Path(folder) / "trace.json"
            profiler.export_chrome_trace(str(plain))
            with plain.open("rb") as source, gzip.open(trace, "wb") as target:
                shutil.copyfileobj(source, target)
    summary = summarise(list(profiler.events()), config.batch_size * config.grad_accum, top)
    summary["config"] = {key: value for key, value in vars(config).items() if key not in ("output", "data_dir")}
    return summary


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="train.py config YAML")
    parser.add_argument("--data-dir", help="the run's data folder")
    parser.add_argument("--warm", type=int, default=40, help="updates before profiling (default 40)")
    parser.add_argument("--steps", type=int, default=40, help="updates profiled (default 40)")
    parser.add_argument("--top", type=int, default=20, help="kernels listed (default 20)")
    parser.add_argument("--out", type=Path, required=True,
                        help="results JSON: one entry per (config, model, overrides), each with its provenance")
    parser.add_argument("--trace", type=Path,
                        help="also write the profiled updates' timeline here (Chrome trace, gzipped: name it .json.gz)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="train.py config overrides")
    args = parser.parse_args(argv)
    command = "python benchmarks/profile_training.py " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        summary = profile_run(args.config, args.data_dir, args.overrides, args.warm, args.steps, args.top, args.trace)
    except (ConfigError, ValueError, RuntimeError) as error:
        parser.error(first_line(error))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    run = {"config_file": args.config, "model": summary["config"]["model"], "overrides": args.overrides,
           "info": environment(device) | {"command": command, "git_revision": git_revision(),
                                          "cpu_count": os.cpu_count()},
           "profile": summary}
    write_json(args.out, merge_run(args.out, run, RUN_KEY))
    print(f"{run['model']}: {summary['img_per_s_from_wall']:.0f} img/s, {summary['wall_ms']:.2f} ms per update, "
          f"device busy {summary['device_busy_ms']:.2f} ms, loop waiting and bookkeeping "
          f"{summary['loop_other_ms']:.2f} ms")
    for name, stage in summary["stages"].items():
        print(f"  {name:8s} host {stage['host_ms']:8.3f} ms  device {stage['device_ms']:8.3f} ms")
    print(json.dumps(summary["kernels"][:8], indent=1))


if __name__ == "__main__":
    main()
