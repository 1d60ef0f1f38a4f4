"""Side-by-side whole-model speed: each zoo model beside its softmax twin and timm's own model, in one process.

``vitzoo-bench --compare`` runs this. For every zoo model and resolution the group is the model itself, its softmax
twin (the same backbone with the softmax mixer, e.g. ``softmax_deit_tiny_patch16_224`` for every ``*_deit_tiny_*``)
and timm's reference (``deit_tiny_patch16_224``; timm's EfficientViT-B for ``qtvit_1..3``). The group is measured
interleaved (A B C A B C ...), ``repeats`` times, so a change in machine load hits all of them alike; each row
reports the median and the spread of the repeats, and beside the throughput:

- ``host_ms``: wall time to enqueue one step without waiting for the device, from steps enqueued back to back after
  a sync, as many as the launch queue takes (:func:`host_ms`). When it exceeds ``device_ms`` the model is host-bound
  and its speed follows the CPU, not the GPU;
- ``device_ms`` and ``launches``: summed kernel time and kernel count of one step (``torch.profiler``);
- ``peak_mem_mb``: peak allocated memory of the step.

Phases: ``infer`` (inference_mode, batch 256 at 224 and the same tokens per batch above), ``train`` (zero_grad,
forward, cross-entropy, backward, AdamW step; batch 128 at 224, scaled the same way) and ``latency`` (batch 1,
isolated steps, p50 and p90, eager and replayed from a captured CUDA graph). Compile modes: ``none`` (eager),
``default`` and ``reduce-overhead`` (``torch.compile(fullgraph=True)``), and ``cuda-graph``: the eager model's
inference step, or its training forward and backward, captured once in CUDA graphs and replayed (the host cost
removed without compiling, so the row shows what the eager kernels cost on the device; training's loss and AdamW step
stay eager, as ``train.py`` runs them with ``cuda_graph=true``). bf16 autocast throughout. A bar on stderr follows the
builds (compiling takes minutes) and the repeats of each (resolution, phase, mode); ``--no-progress`` hides it. The
results file is rewritten when a (resolution, phase, mode) is done, so an interrupted run keeps the ones before it.
"""
from __future__ import annotations

import hashlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from vitzoo.bench.common import (
    create_model,
    environment,
    git_revision,
    is_oom,
    one_line,
    percentile,
    release_memory,
    write_json,
)
from vitzoo.models import list_models
from vitzoo.registry import FAMILIES
from vitzoo.train.cuda_graph import TrainingForward, graphed_training_forward

PHASES = ("infer", "train", "latency")
COMPILE_MODES = ("none", "default", "reduce-overhead")  # eager, and the two modes worth a fullgraph compile
CUDA_GRAPH = "cuda-graph"  # the eager step (inference; training forward + backward) replayed from CUDA graphs
# every zoo model name -> (its family, its size key), from the registry
_SIZES = {family.model_name(size): (family, size) for family in FAMILIES.values() for size in family.sizes}


def reference_models(name: str) -> dict[str, str]:
    """The comparison group of a zoo model: ``{'zoo': name, 'twin': softmax twin, 'timm': timm's model}``.

    timm's model is the registry's ``Size.timm_model``; the twin is the softmax family's model of the same size. A
    softmax model is its own twin; QT-ViT (on EfficientViT) has no softmax twin in the zoo.
    """
    family, size = _SIZES[name]
    group = {"zoo": name}
    if family.backbone == "deit" and family.name != "softmax":
        group["twin"] = FAMILIES["softmax"].model_name(size)
    group["timm"] = family.sizes[size].timm_model
    return group


def scaled_batch(batch: int, img_size: int) -> int:
    """The same tokens per batch as ``batch`` at 224 for larger sizes: batch * (224 / img_size)^2, at least 1 (never
    larger than ``batch``)."""
    return max(1, min(batch, round(batch * (224 / img_size) ** 2)))


@dataclass
class CompareConfig:
    """How to measure. ``batch_size`` / ``train_batch_size`` are the batches at 224 (scaled by pixel count above)."""

    batch_size: int = 256
    train_batch_size: int = 128
    repeats: int = 3
    warm_steps: int = 10
    timed_steps: int = 30
    latency_steps: int = 50
    device: str = "cuda"
    channels_last: bool = False  # models and inputs in channels-last memory (timm's --channels-last)


def build(name: str, img_size: int, device: torch.device, compile_mode: str, channels_last: bool = False) -> nn.Module:
    """``name`` for ``img_size`` inputs on ``device`` in eval mode (in channels-last memory with ``channels_last``),
    compiled unless ``compile_mode == 'none'``."""
    model = create_model(name, img_size, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile_mode not in ("none", CUDA_GRAPH):
        model = torch.compile(model, mode=None if compile_mode == "default" else compile_mode, fullgraph=True,
                              dynamic=False)
    return model


def capture_inference(model: nn.Module, x: torch.Tensor) -> torch.cuda.CUDAGraph:
    """A CUDA graph of ``model(x)`` under inference mode and bf16 autocast; ``graph.replay()`` reruns it on ``x``'s
    current contents."""
    def forward() -> None:
        # autocast's cast cache would hold tensors from outside the graph
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16, cache_enabled=False):
            model(x)

    # warm-up on a side stream (kernel compilation and allocations stay out of the graph), then capture
    stream = torch.cuda.Stream(x.device)
    stream.wait_stream(torch.cuda.current_stream(x.device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            forward()
    torch.cuda.current_stream(x.device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        forward()
    return graph


class Step:
    """One benchmark step of a phase: ``__call__`` runs it; the inputs and optimizer live here.

    ``graphed``: replay the step from CUDA graphs captured here: the whole inference step, or the training step's
    forward and backward (:func:`~vitzoo.train.cuda_graph.graphed_training_forward`; loss and AdamW stay eager, as
    in ``train.py`` with ``cuda_graph=true``)."""

    def __init__(self, model: nn.Module, phase: str, batch: int, img_size: int, device: torch.device,
                 compiled: bool, graphed: bool = False, channels_last: bool = False) -> None:
        self.model, self.phase, self.device = model, phase, device
        self.x = torch.randn(batch, 3, img_size, img_size, device=device)
        if channels_last:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        mark = getattr(torch.compiler, "cudagraph_mark_step_begin", None)
        self.begin = mark if compiled and mark is not None else (lambda: None)
        self.graph = None
        if graphed and device.type != "cuda":
            raise ValueError("a CUDA-graph step needs a CUDA device")
        if phase == "train":
            model.train()  # once here: a per-step .train() walks every module inside the timed loop
            # fused on CUDA, as train.py builds it
            self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
            self.target = torch.randint(0, 1000, (batch,), device=device)
            self.forward = (graphed_training_forward(model, self.x, torch.bfloat16) if graphed
                            else TrainingForward(model, torch.bfloat16))
        elif graphed:
            self.graph = capture_inference(self.model, self.x)

    def _infer(self) -> None:
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16):
            self.model(self.x)

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
            return
        self.begin()
        if self.phase == "train":
            self.optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(self.forward(self.x), self.target).backward()
            self.optimizer.step()
        else:
            self._infer()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_ms(step: Callable[[], None], device: torch.device, steps: int) -> float:
    """Mean ms per step of ``steps`` queued steps (CUDA events; perf_counter on the CPU)."""
    _sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            step()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / steps
    begin = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - begin) * 1e3 / steps


# Kernels a step sequence may leave pending before a launch blocks on the device: CUDA's launch queue holds about 1024.
_PENDING_LAUNCHES = 800


def host_ms(step: Callable[[], None], device: torch.device, launches: float | None = None,
            samples: int = 10) -> float:
    """Host ms to enqueue one step, without waiting for the device: after a sync, steps are enqueued back to back,
    as many as keep ``launches`` (per step) x steps within the launch queue (one at least), and their wall time is
    divided by their number; the median of ``samples`` such runs. Steps back to back are what a loop runs; a single
    step timed straight after a sync also counts the host waking from the sync (on an H100 host, single steps of the
    tiny DeiT models took up to twice what their back-to-back throughput allowed)."""
    count = max(1, int(_PENDING_LAUNCHES // launches)) if launches else 1
    times = []
    for _ in range(samples):
        _sync(device)
        begin = time.perf_counter()
        for _ in range(count):
            step()
        times.append((time.perf_counter() - begin) * 1e3 / count)
    _sync(device)
    return statistics.median(times)


def device_profile(step: Callable[[], None], device: torch.device, steps: int = 3
                   ) -> tuple[float | None, float | None]:
    """(device ms, kernel launches) per step, from torch.profiler's kernel events; (None, None) off CUDA."""
    if device.type != "cuda":
        return None, None
    from torch.profiler import ProfilerActivity, profile

    _sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        _sync(device)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    total_us = sum(e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total for e in kernels)
    return total_us / 1e3 / steps, len(kernels) / steps


def latency_ms(model: nn.Module, img_size: int, device: torch.device, steps: int, graphed: bool) -> list[float]:
    """Isolated batch-1 inference times; ``graphed`` replays a captured CUDA graph of the forward."""
    x = torch.randn(1, 3, img_size, img_size, device=device)

    def eager() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
            model(x)

    run: Callable[[], Any] = capture_inference(model, x).replay if graphed else eager
    for _ in range(3):
        run()
    times = []
    for _ in range(steps):
        _sync(device)
        begin = time.perf_counter()
        run()
        _sync(device)
        times.append((time.perf_counter() - begin) * 1e3)
    return times


def comparison_set(names: Iterable[str]) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Every model to measure (zoo models first, then their twins and timm's models, each once) and each model's
    role in the rows: ``{'role': 'zoo', 'twin_model': ..., 'timm_model': ...}`` for a zoo model, ``{'role': 'twin'}``
    or ``{'role': 'timm'}`` for the others."""
    groups = {name: reference_models(name) for name in names}
    ordered: list[str] = []
    for role in ("zoo", "twin", "timm"):
        for group in groups.values():
            if role in group and group[role] not in ordered:
                ordered.append(group[role])
    roles: dict[str, dict[str, str]] = {}
    for group in groups.values():
        roles[group["zoo"]] = {"role": "zoo"} | {f"{k}_model": v for k, v in group.items() if k != "zoo"}
    for group in groups.values():
        for role in ("twin", "timm"):
            if role in group and group[role] not in roles:
                roles[group[role]] = {"role": role}
    return ordered, roles


def compare_models(names: list[str], roles: dict[str, dict[str, str]], img_size: int, phase: str, compile_mode: str,
                   config: CompareConfig, progress: bool = True) -> list[dict[str, Any]]:
    """Rows for ``names`` at one (resolution, phase, compile mode), throughput measured interleaved. ``progress``
    shows a bar on stderr over the models' builds (compiling can take minutes) and the timed repeats."""
    device = torch.device(config.device)
    rows, steps = {}, {}
    bar = tqdm(total=len(names) * (1 if phase == "latency" else 1 + config.repeats), unit="step", file=sys.stderr,
               desc=f"{phase} {img_size}px {compile_mode}", disable=not progress, leave=False)
    for name in names:
        bar.set_postfix_str(f"building {name}")
        rows[name] = dict(model=name, img_size=img_size, phase=phase, compile=compile_mode, status="ok",
                          **roles.get(name, {}))
        try:
            model = build(name, img_size, device, compile_mode, config.channels_last)
            if phase == "latency":
                rows[name]["batch"] = 1
                eager = latency_ms(model, img_size, device, config.latency_steps, graphed=False)
                rows[name].update(latency_p50_ms=percentile(eager, 50), latency_p90_ms=percentile(eager, 90))
                if device.type == "cuda" and compile_mode == "none":
                    graphed = latency_ms(model, img_size, device, config.latency_steps, graphed=True)
                    rows[name].update(graphed_p50_ms=percentile(graphed, 50), graphed_p90_ms=percentile(graphed, 90))
                continue
            batch = scaled_batch(config.train_batch_size if phase == "train" else config.batch_size, img_size)
            rows[name]["batch"] = batch
            steps[name] = Step(model, phase, batch, img_size, device, compile_mode not in ("none", CUDA_GRAPH),
                               graphed=compile_mode == CUDA_GRAPH, channels_last=config.channels_last)
            for _ in range(config.warm_steps):
                steps[name]()
        except Exception as error:  # a failure is a row's status; the others go on
            rows[name]["status"] = "oom" if is_oom(error) else one_line(error)
            steps.pop(name, None)
        finally:
            if phase == "latency":
                release_memory(device)
            bar.update()
    throughput: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(config.repeats):  # interleaved: A B C A B C ...
        for name, step in list(steps.items()):
            bar.set_postfix_str(f"timing {name}")
            try:
                step()  # re-warm after the other models ran
                throughput[name].append(rows[name]["batch"] / timed_ms(step, device, config.timed_steps) * 1e3)
            except Exception as error:
                rows[name]["status"] = one_line(error)
                steps.pop(name)
            bar.update()
    for name, step in steps.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        dev_ms, launches = device_profile(step, device)
        host = host_ms(step, device, launches)
        values = throughput[name]
        rows[name].update(
            img_per_s=round(statistics.median(values), 1), img_per_s_min=round(min(values), 1),
            img_per_s_max=round(max(values), 1), repeats=[round(v, 1) for v in values],
            host_ms=round(host, 3), device_ms=None if dev_ms is None else round(dev_ms, 3),
            launches=None if launches is None else round(launches, 1),
            peak_mem_mb=round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None,
        )
    bar.close()
    steps.clear()
    release_memory(device)
    return list(rows.values())


PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def source_digest(package: Path = PACKAGE_ROOT) -> str:
    """The first 16 hex digits of a SHA-256 over every ``.py`` file of ``package`` (default: all of vitzoo), names
    included: the code measured, whatever git says where the tree was copied."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def provenance(command: str, device: torch.device) -> dict[str, str]:
    """GPU, versions, date, command, git revision and source digest of a run."""
    return environment(device) | {
        "command": command, "git_revision": git_revision(), "source_sha256": source_digest(),
        "cpu_count": str(os.cpu_count()),
    }


def run_compare(names: Iterable[str], img_sizes: Iterable[int], phases: Iterable[str], compile_modes: Iterable[str],
                config: CompareConfig, results_file: Path | None, command: str,
                log: Callable[[str], None] = print, progress: bool = True) -> dict[str, Any]:
    """Measure the zoo models, their twins and timm's models at every (size, phase, compile mode), interleaved;
    rewrite ``results_file`` after each."""
    ordered, roles = comparison_set(names)
    result: dict[str, Any] = {"info": provenance(command, torch.device(config.device))
                              | {"precision": "bf16", "config": vars(config)}, "rows": []}
    measure_all(ordered, roles, img_sizes, phases, compile_modes, config, result, results_file, log, progress)
    return result


def measure_all(names: list[str], roles: dict[str, dict[str, str]], img_sizes: Iterable[int], phases: Iterable[str],
                compile_modes: Iterable[str], config: CompareConfig, result: dict[str, Any], results_file: Path | None,
                log: Callable[[str], None] = print, progress: bool = True) -> None:
    """:func:`compare_models` of ``names`` at every (size, phase, compile mode), its rows appended to
    ``result['rows']`` and ``result`` rewritten to ``results_file`` after each."""
    if torch.device(config.device).type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    for img_size in img_sizes:
        for phase in phases:
            for mode in compile_modes:
                if phase == "latency" and mode in ("reduce-overhead", CUDA_GRAPH):
                    continue  # the eager row already reports the CUDA-graphed latency
                for row in compare_models(names, roles, img_size, phase, mode, config, progress):
                    result["rows"].append(row)
                    log(format_row(row))
                if results_file is not None:
                    write_json(results_file, result)


def format_row(row: dict[str, Any]) -> str:
    head = f"{row['model']:36s} {row['img_size']:5d} {row['phase']:7s} {row['compile']:15s}"
    if row["status"] != "ok":
        return f"{head} {row['status']}"
    if row["phase"] == "latency":
        graphed = f" graphed p50 {row['graphed_p50_ms']:.2f}" if "graphed_p50_ms" in row else ""
        return f"{head} p50 {row['latency_p50_ms']:.2f} ms p90 {row['latency_p90_ms']:.2f} ms{graphed}"
    device = "" if row["device_ms"] is None else f" device {row['device_ms']:.2f} ms launches {row['launches']:.0f}"
    return (f"{head} {row['img_per_s']:10.1f} img/s [{row['img_per_s_min']:.0f}-{row['img_per_s_max']:.0f}] "
            f"host {row['host_ms']:.2f} ms{device}")


def check_names(names: Iterable[str]) -> list[str]:
    """The zoo models to compare; a one-line error for names that are not zoo models."""
    known = set(list_models())
    names = list(names)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"--compare takes vitzoo model names; unknown: {', '.join(unknown)} (see vitzoo-models)")
    return names
