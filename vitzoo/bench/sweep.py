"""Throughput, latency, training speed, memory, params and GMACs of timm / vitzoo models across resolutions.

The protocol follows timm's ``benchmark.py``: a random input already on the device, warm-up steps, then timed steps
(CUDA events on a GPU, ``perf_counter`` on the CPU), with the median step time reported. Every row records the
environment (device, torch, triton, timm, precision, compile mode, kernel backend, date), so numbers from different
runs can be told apart. Rows are written to the CSV as soon as they are measured, so an interrupted run keeps what
it measured, and ``--resume`` completes it; without ``--resume`` an existing results file is refused, never
replaced. This module must not import matplotlib: it runs on GPU machines that may lack it (plots are made by
``vitzoo.report.pareto`` from the CSVs).

Examples::

    vitzoo-bench --models 'softmax_deit_tiny_*' 'linear_deit_tiny_*' deit_tiny_patch16_224 --img-sizes 224 512 \\
        --results-file bench.csv
    python -m vitzoo.bench.sweep --models linear_deit_tiny_patch16_224 --model-kwargs depth=2 --img-sizes 32 64 \\
        --device cpu
"""
from __future__ import annotations

import argparse
import ast
import csv
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import vitzoo  # noqa: F401  (registers the models)
from vitzoo.bench.common import (
    COMPILE_MODES,
    check_results_file,
    create_model,
    environment,
    is_oom,
    one_line,
    percentile,
    release_memory,
    write_csv,
)
from vitzoo.bench.compare import COMPILE_MODES as COMPARE_COMPILE_MODES
from vitzoo.bench.compare import CUDA_GRAPH, CompareConfig, check_names, run_compare
from vitzoo.bench.compare import PHASES as COMPARE_PHASES
from vitzoo.flops import count_gmacs
from vitzoo.models import list_models, similar_models_hint
from vitzoo.ops import kernel_backend

# timm's benchmark CSV columns in timm's order first (so timm's tooling reads our files), then ours.
TIMM_COLUMNS = ("model", "infer_img_size", "infer_samples_per_sec", "infer_step_time", "infer_batch_size",
                "param_count", "infer_gmacs", "infer_macts")
COLUMNS = TIMM_COLUMNS + (
    "infer_latency_p50_ms", "infer_latency_p90_ms", "train_samples_per_sec", "train_step_time", "train_batch_size",
    "peak_mem_mb", "train_peak_mem_mb", "model_kwargs", "precision", "compile", "kernel_backend", "device", "torch",
    "triton", "timm", "date", "status",
)
DEFAULT_IMG_SIZES = (224, 384, 512, 768, 1024)
PRECISIONS = ("fp32", "tf32", "bf16")
ALL_VITZOO = "all-vitzoo"  # pseudo-name that expands to every registered vitzoo model
_MIN_TIMED_STEPS = 5  # a median of fewer steps is too noisy, whatever the time limit says


@dataclass
class BenchConfig:
    """How to measure; one config applies to every (model, resolution) of a run.

    Attributes:
        device: ``'cuda'``, ``'cuda:1'``, ``'cpu'``...
        batch_size: inference batch at 224 (or at every size when ``scale_batch`` is off).
        train_batch_size: training batch at 224 (None: same as ``batch_size``).
        scale_batch: shrink the batches with the pixel count above 224, ``round(batch * (224 / size)^2)``, so that
            large sizes keep about the same work per step instead of running out of memory or time.
        precisions: any of :data:`PRECISIONS` (``bf16`` is autocast, as timm's ``amp_bfloat16``).
        compile_modes: any of :data:`COMPILE_MODES` (``none`` is eager).
        bench: ``'infer'``, ``'train'`` or ``'both'`` (latency belongs to ``infer``).
        num_warm_iter, num_bench_iter: warm-up and timed steps for throughput (timm: 10 and 40).
        latency_iters: timed batch-1 steps for the latency percentiles.
        max_phase_seconds: cap on the warm-up and on the timed part of each phase; the timed step count is cut
            (not below 5) to fit.
        count_macs: add fvcore GMACs (attention included; see :mod:`vitzoo.flops`).
        model_kwargs: extra ``timm.create_model`` arguments, e.g. ``{'depth': 2}``.
        lr: AdamW learning rate of the training step.
    """

    device: str = "cpu"
    batch_size: int = 8
    train_batch_size: int | None = None
    scale_batch: bool = False
    precisions: tuple[str, ...] = ("fp32",)
    compile_modes: tuple[str, ...] = ("none",)
    bench: str = "both"
    num_warm_iter: int = 10
    num_bench_iter: int = 40
    latency_iters: int = 50
    max_phase_seconds: float | None = None
    count_macs: bool = True
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    lr: float = 1e-4


# ----------------------------------------------------------------------------------------------------------------------
# timing


class _StepTimer:
    """Per-step wall times in ms: CUDA events on a GPU (no host sync inside the loop), perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) if self.cuda else (end - start) * 1e3


def time_steps(step: Callable[[], Any], device: torch.device, num_warm: int, num_iter: int,
               max_seconds: float | None = None, isolated: bool = False) -> list[float]:
    """Run ``step`` ``num_warm`` times untimed, then time up to ``num_iter`` steps; returns ms per step.

    Args:
        step: one forward (or training step) on a fixed input.
        device: where ``step`` runs (decides between CUDA events and perf_counter).
        num_warm: untimed steps first (compilation, autotuning, allocator growth, cuDNN heuristics).
        num_iter: timed steps.
        max_seconds: if set, the warm-up stops after this long (at least 2 steps), and one synchronised probe step
            estimates the step time so that ``num_iter`` is cut for the timed part to take about this long (never
            below 5 steps).
        isolated: synchronise before each step, so every time is one request alone (latency). Otherwise the steps
            are queued back to back, as in a throughput run, and each time is the distance between two events.
    """
    timer = _StepTimer(device)
    start = time.perf_counter()
    for index in range(num_warm):
        step()
        if max_seconds is not None and index >= 1:
            # A slow model (seconds a step) would otherwise spend most of the run warming up.
            timer.synchronize()
            if time.perf_counter() - start > max_seconds:
                break
    timer.synchronize()
    if max_seconds is not None:
        start = time.perf_counter()
        step()
        timer.synchronize()
        probe = time.perf_counter() - start
        num_iter = max(min(_MIN_TIMED_STEPS, num_iter), min(num_iter, int(max_seconds / max(probe, 1e-9))))
    times = []
    if isolated:
        for _ in range(num_iter):
            timer.synchronize()
            start = timer.mark()
            step()
            end = timer.mark()
            timer.synchronize()
            times.append(timer.elapsed_ms(start, end))
    else:
        marks = [timer.mark()]
        for _ in range(num_iter):
            step()
            marks.append(timer.mark())
        timer.synchronize()
        times = [timer.elapsed_ms(a, b) for a, b in zip(marks[:-1], marks[1:], strict=True)]
    return times


# ----------------------------------------------------------------------------------------------------------------------
# model set-up


def resolve_models(patterns: Iterable[str]) -> list[str]:
    """Expand names and fnmatch patterns over timm's registry (vitzoo's models included), keeping first-seen order.

    ``all-vitzoo`` expands to every registered vitzoo model. A plain name must be a registered model.
    """
    names: list[str] = []
    for pattern in patterns:
        if pattern == ALL_VITZOO:
            found = list_models()
        elif any(ch in pattern for ch in "*?["):
            found = timm.list_models(pattern)
        elif timm.is_model(pattern):
            found = [pattern]
        else:
            raise ValueError(f"unknown model {pattern!r}{similar_models_hint(pattern)}; expected a registered "
                             "timm/vitzoo name or a pattern")
        if not found:
            raise ValueError(f"no registered model matches {pattern!r}")
        names.extend(name for name in found if name not in names)
    return names


def shard(names: list[str], spec: str | None) -> list[str]:
    """The models of shard ``spec`` = "I/N" (0 <= I < N): every N-th name from the I-th, so N processes (one per GPU)
    split a sweep evenly and together cover every name exactly once. ``None`` keeps every name."""
    if spec is None:
        return names
    index, sep, count = spec.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
        raise ValueError(f"--shard must be I/N with 0 <= I < N, got {spec!r}")
    return names[int(index)::int(count)]


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _set_matmul_precision(precision: str) -> None:
    # timm's benchmark turns TF32 on whenever CUDA exists, which silently changes "fp32" numbers; here it is explicit:
    # fp32 is IEEE fp32, tf32 and bf16 (for the matmuls autocast leaves in fp32) allow TF32.
    torch.set_float32_matmul_precision("highest" if precision == "fp32" else "high")
    torch.backends.cudnn.allow_tf32 = precision != "fp32"


def _maybe_compile(model: nn.Module, mode: str) -> nn.Module:
    if mode == "none":
        return model
    torch._dynamo.reset()  # as timm: no graphs or guards left over from the previous model
    # Static shapes: the batch-256, batch-1 and training graphs are each compiled for their exact shape, instead of
    # the batch dimension turning dynamic on the second shape seen.
    return torch.compile(model, mode=None if mode == "default" else mode, dynamic=False)


def _step_begin(compiled: bool) -> Callable[[], None]:
    # CUDA-graph modes reuse output buffers between replays; marking each step tells them a new iteration began.
    mark = getattr(torch.compiler, "cudagraph_mark_step_begin", None)
    return mark if compiled and mark is not None else (lambda: None)


def _scaled_batch(batch: int, img_size: int, scale: bool) -> int:
    # Only ever shrinks: below 224 the base batch already fills the device as far as this protocol asks.
    return max(1, min(batch, round(batch * (224 / img_size) ** 2))) if scale else batch


def _in_chans(config: BenchConfig) -> int:
    return int(config.model_kwargs.get("in_chans", 3))


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


# ----------------------------------------------------------------------------------------------------------------------
# the measurements (module-level functions so tests can replace one, e.g. to simulate running out of memory)


def run_inference(model: nn.Module, img_size: int, batch_size: int, precision: str, compiled: bool,
                  config: BenchConfig) -> dict[str, Any]:
    """Throughput at ``batch_size``, then batch-1 latency p50/p90; returns the ``infer_*`` and peak memory fields."""
    device = torch.device(config.device)
    begin = _step_begin(compiled)
    x = torch.randn(batch_size, _in_chans(config), img_size, img_size, device=device)

    def step():
        begin()
        return model(x)

    _peak_reset(device)
    with torch.inference_mode(), _autocast(device, precision):
        times = time_steps(step, device, config.num_warm_iter, config.num_bench_iter, config.max_phase_seconds)
        peak = _peak_mb(device)
        x = x[:1].clone()
        latencies = time_steps(step, device, config.num_warm_iter, config.latency_iters, config.max_phase_seconds,
                               isolated=True)
    step_ms = statistics.median(times)
    return {
        "infer_samples_per_sec": round(batch_size / step_ms * 1e3, 2), "infer_step_time": round(step_ms, 3),
        "infer_latency_p50_ms": round(percentile(latencies, 50), 3),
        "infer_latency_p90_ms": round(percentile(latencies, 90), 3), "peak_mem_mb": peak,
    }


def run_training(model: nn.Module, img_size: int, batch_size: int, precision: str, compiled: bool,
                 config: BenchConfig) -> dict[str, Any]:
    """Training steps (zero_grad, forward, cross-entropy on random labels, backward, AdamW step) at ``batch_size``."""
    device = torch.device(config.device)
    begin = _step_begin(compiled)
    x = torch.randn(batch_size, _in_chans(config), img_size, img_size, device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, fused=device.type == "cuda")  # as train.py builds it
    target = None

    def step():
        nonlocal target
        begin()
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, precision):
            out = model(x)
        if target is None:  # the class count is only known from the output
            target = torch.randint(0, out.shape[-1], (batch_size,), device=device)
        F.cross_entropy(out.float(), target).backward()
        optimizer.step()

    _peak_reset(device)
    model.train()
    try:
        times = time_steps(step, device, config.num_warm_iter, config.num_bench_iter, config.max_phase_seconds)
    finally:
        model.eval()
        optimizer.zero_grad(set_to_none=True)  # frees the gradients before the next measurement
    step_ms = statistics.median(times)
    return {"train_samples_per_sec": round(batch_size / step_ms * 1e3, 2), "train_step_time": round(step_ms, 3),
            "train_peak_mem_mb": _peak_mb(device)}


# ----------------------------------------------------------------------------------------------------------------------
# the sweep


def _format_kwargs(kwargs: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(kwargs.items()))


def _sig(value: float, digits: int = 6) -> float:
    return float(f"{value:.{digits}g}")


def _combos(config: BenchConfig) -> list[tuple[str, str]]:
    return [(p, c) for p in config.precisions for c in config.compile_modes]


def _base_row(name: str, img_size: int, precision: str, compile_mode: str, config: BenchConfig) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMNS, "")
    infer_batch = _scaled_batch(config.batch_size, img_size, config.scale_batch)
    train_batch = _scaled_batch(config.train_batch_size or config.batch_size, img_size, config.scale_batch)
    row.update(model=name, infer_img_size=img_size, infer_batch_size=infer_batch, precision=precision,
               compile=compile_mode, model_kwargs=_format_kwargs(config.model_kwargs))
    if config.bench in ("train", "both"):
        # BatchNorm (EfficientViT) cannot train on one sample.
        row["train_batch_size"] = max(2, train_batch)
    return row


def bench_model(name: str, img_size: int, config: BenchConfig) -> list[dict[str, Any]]:
    """All rows of one (model, resolution): one per (precision, compile mode), failures recorded in ``status``."""
    device = torch.device(config.device)
    env = environment(device)
    rows = [_base_row(name, img_size, p, c, config) | env for p, c in _combos(config)]
    try:
        model = create_model(name, img_size, device, config.model_kwargs)
    except Exception as error:  # any failure becomes the rows' status and the sweep goes on
        status = "oom" if is_oom(error) else f"error: {one_line(error)}"
        for row in rows:
            row["status"] = status
        release_memory(device)
        return rows
    params = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
    backend = kernel_backend(device) if type(model).__module__.startswith("vitzoo") else ""
    gmacs, macs_note = "", ""
    if config.count_macs:
        try:
            gmacs = _sig(count_gmacs(model, (_in_chans(config), img_size, img_size)))
        except Exception as error:  # the count is one column: the timings are still worth having
            macs_note = f"; gmacs: {'oom' if is_oom(error) else one_line(error)}"
            release_memory(device)
    for row in rows:
        row.update(param_count=params, infer_gmacs=gmacs, kernel_backend=backend)
        row["status"] = _measure_combo(model, row, config) + macs_note
        release_memory(device)
    del model
    release_memory(device)
    return rows


def _measure_combo(model: nn.Module, row: dict[str, Any], config: BenchConfig) -> str:
    """Fill ``row``'s measurements for its precision and compile mode; returns the status.

    A failing phase ends the combination: ``oom`` / ``error: ...`` when the first phase fails, ``oom (train)`` /
    ``error (train): ...`` when inference was measured and training failed (the inference numbers stay).
    """
    device = torch.device(config.device)
    precision, mode = row["precision"], row["compile"]
    _set_matmul_precision(precision)
    phases = []
    if config.bench in ("infer", "both"):
        phases.append(("infer", run_inference, row["infer_batch_size"]))
    if config.bench in ("train", "both"):
        phases.append(("train", run_training, row["train_batch_size"]))
    failure = None
    try:
        runner = _maybe_compile(model, mode)
    except Exception as error:  # any failure becomes the row's status and the sweep goes on
        return f"error: {one_line(error)}"
    for index, (phase, fn, batch) in enumerate(phases):
        try:
            row.update(fn(runner, row["infer_img_size"], batch, precision, mode != "none", config))
        except Exception as error:  # recorded in the row; the sweep goes on
            failure = ("oom", "") if is_oom(error) else ("error", f": {one_line(error)}")
        if failure is not None:
            # The exception (and the frames holding the phase's tensors) is gone here, so the memory can be freed.
            release_memory(device)
            kind, detail = failure
            return kind + (f" ({phase})" if index else "") + detail
    return "ok"


def warm_up_device(device: torch.device, seconds: float = 2.0) -> None:
    """Keep a GPU busy for ``seconds`` so the first model is not timed while the clocks ramp up from idle."""
    if device.type != "cuda":
        return
    a = torch.randn(4096, 4096, device=device, dtype=torch.bfloat16)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(20):
            a = (a @ a).clamp_(-1, 1)
        torch.cuda.synchronize(device)


def measured_rows(results_file: Path, config: BenchConfig) -> list[dict[str, Any]]:
    """Rows of an earlier run in ``results_file`` that were measured (any status but ``skipped: ...``) with this
    run's model kwargs: what ``--resume`` keeps. Raises ``ValueError`` if the file is not a vitzoo-bench CSV."""
    if not results_file.is_file():
        return []
    with results_file.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    # the header decides: a foreign file with a header and no rows must not be overwritten either
    header = reader.fieldnames or []
    missing = [column for column in ("model", "infer_img_size", "precision", "compile", "status")
               if header and column not in header]
    if missing:
        raise ValueError(f"--resume: {results_file} is not a vitzoo-bench CSV (no {', '.join(missing)} column)")
    kwargs = _format_kwargs(config.model_kwargs)
    return [row for row in rows if not row["status"].startswith("skipped") and row.get("model_kwargs", "") == kwargs]


def run_benchmark(names: list[str], img_sizes: Iterable[int], config: BenchConfig, results_file: Path | None = None,
                  time_budget: float | None = None, progress: bool = True,
                  kept: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Benchmark every (resolution, model) pair; ``results_file`` is rewritten after each pair.

    The sweep goes resolution by resolution, so a run cut short by ``time_budget`` (seconds) still has every model at
    the smaller sizes; the pairs it did not reach are recorded with status ``skipped: time budget``. ``kept``: rows
    of an earlier run (:func:`measured_rows`) that are written again and not re-measured, so that a sweep spread over
    several calls resumes.
    """
    pairs = [(name, size) for size in img_sizes for name in names]
    measured = {(row["model"], int(row["infer_img_size"]), row["precision"], row["compile"]) for row in kept}
    pairs = [(name, size) for name, size in pairs
             if not all((name, size, p, c) in measured for p, c in _combos(config))]
    # A pair measured only in part is measured again, so its old rows go.
    again = set(pairs)
    written = [row for row in kept if (row["model"], int(row["infer_img_size"])) not in again]
    if results_file is not None:
        write_csv(results_file, written, COLUMNS)
    rows: list[dict[str, Any]] = []
    warm_up_device(torch.device(config.device))
    start = time.monotonic()
    bar = tqdm(pairs, desc="bench", unit="model", file=sys.stderr, disable=not progress)
    for name, size in bar:
        bar.set_postfix_str(f"{name}@{size}")
        if time_budget is not None and time.monotonic() - start >= time_budget:
            env = environment(torch.device(config.device))
            new = [_base_row(name, size, p, c, config) | env | {"status": "skipped: time budget"}
                   for p, c in _combos(config)]
        else:
            new = bench_model(name, size, config)
        rows.extend(new)
        written.extend(new)
        if results_file is not None:
            write_csv(results_file, written, COLUMNS)
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# command line


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width summary of the rows for the terminal."""
    columns = (("model", "model"), ("infer_img_size", "res"), ("infer_batch_size", "bs"), ("precision", "prec"),
               ("compile", "compile"), ("infer_samples_per_sec", "infer img/s"), ("infer_latency_p50_ms", "p50 ms"),
               ("infer_latency_p90_ms", "p90 ms"), ("train_samples_per_sec", "train img/s"),
               ("peak_mem_mb", "peak MB"), ("param_count", "params M"), ("infer_gmacs", "GMACs"),
               ("status", "status"))
    cells = [[title for _, title in columns]]
    cells += [["" if row.get(key) is None else str(row[key]) for key, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def parse_model_kwargs(items: Iterable[str]) -> dict[str, Any]:
    """``['depth=2', 'mixer=linear']`` -> ``{'depth': 2, 'mixer': 'linear'}`` (Python literals where they parse)."""
    kwargs: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--model-kwargs expects key=value, got {item!r}")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    return kwargs


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``vitzoo-bench: error: ...`` (argparse prints the usage block first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``vitzoo-bench`` argument parser."""
    parser = _Parser(prog="vitzoo-bench", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True,
                        help=f"names or fnmatch patterns over timm's registry; '{ALL_VITZOO}' = every vitzoo model")
    parser.add_argument("--img-sizes", nargs="+", type=int, default=list(DEFAULT_IMG_SIZES),
                        help=f"resolutions (default {' '.join(map(str, DEFAULT_IMG_SIZES))})")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="default cuda when available, else cpu")
    parser.add_argument("-b", "--batch-size", type=int, help="inference batch (default 256 on GPU, 8 on CPU)")
    parser.add_argument("--train-batch-size", type=int, help="training batch (default: --batch-size)")
    parser.add_argument("--scale-batch", action="store_true",
                        help="scale the batches by (224/size)^2 so large sizes do the same work per step")
    parser.add_argument("--bench", choices=("infer", "train", "both"), default="both",
                        help="phases to run (default both; latency belongs to infer)")
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS,
                        help="bf16 = autocast bfloat16 (default bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--compile", nargs="+", choices=COMPILE_MODES, default=["none"],
                        help="torch.compile modes to measure; none = eager")
    parser.add_argument("--num-warm-iter", type=int, default=10, help="untimed steps per phase (default 10)")
    parser.add_argument("--num-bench-iter", type=int, default=40, help="timed throughput steps (default 40)")
    parser.add_argument("--latency-iters", type=int, default=50, help="timed batch-1 steps (default 50)")
    parser.add_argument("--max-phase-seconds", type=float,
                        help="cap the timed steps of each phase to about this many seconds (at least 5 steps)")
    parser.add_argument("--time-budget", type=float,
                        help="seconds; pairs not started by then are recorded as 'skipped: time budget'")
    parser.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra timm.create_model arguments, e.g. depth=2")
    parser.add_argument("--no-macs", action="store_true", help="skip the fvcore GMAC count")
    parser.add_argument("--shard", metavar="I/N",
                        help="benchmark only every N-th model from the I-th (one process per GPU)")
    parser.add_argument("--results-file", type=Path,
                        help="new CSV to write (rewritten after each model, so a cut-off run keeps what it measured);"
                             " an existing file is refused unless --resume")
    parser.add_argument("--resume", action="store_true",
                        help="keep the measured rows already in --results-file and benchmark only the pairs it lacks")
    parser.add_argument("--no-progress", action="store_true")
    compare = parser.add_argument_group(
        "side-by-side comparison", "each zoo model beside its softmax twin and timm's model, interleaved in one process"
        " (vitzoo.bench.compare); --results-file is then a JSON file")
    compare.add_argument("--compare", action="store_true", help="run the side-by-side comparison instead of the sweep")
    compare.add_argument("--phases", nargs="+", choices=COMPARE_PHASES, default=list(COMPARE_PHASES),
                         help="comparison phases (default all)")
    compare.add_argument("--repeats", type=int, default=3, help="interleaved repeats per group (default 3)")
    compare.add_argument("--channels-last", action="store_true",
                         help="models and inputs in channels-last memory (as train.py with channels_last=true)")
    compare.add_argument("--cuda-graph", action="store_true",
                         help="also measure the eager model's steps replayed from CUDA graphs (inference; training "
                              "forward and backward): no host work per kernel, no compile")
    return parser


# (argument, its flag, the smallest valid value): checked after parsing, so one message names the flag and the value
_AT_LEAST = (("img_sizes", "--img-sizes", 1), ("batch_size", "--batch-size", 1),
             ("train_batch_size", "--train-batch-size", 1), ("num_warm_iter", "--num-warm-iter", 0),
             ("num_bench_iter", "--num-bench-iter", 1), ("latency_iters", "--latency-iters", 1),
             ("time_budget", "--time-budget", 0), ("repeats", "--repeats", 1))


def check_ranges(args: argparse.Namespace) -> None:
    """Raise ``ValueError`` (one line naming the flag) for a count, size or time out of its range."""
    for dest, flag, minimum in _AT_LEAST:
        value = getattr(args, dest)
        for item in value if isinstance(value, list) else [value]:
            if item is not None and not item >= minimum:  # `not >=` also refuses nan
                raise ValueError(f"{flag} must be >= {minimum}, got {item}")
    if args.max_phase_seconds is not None and not args.max_phase_seconds > 0:
        raise ValueError(f"--max-phase-seconds must be > 0, got {args.max_phase_seconds}")


def check_device(name: str) -> torch.device:
    """The device ``--device name`` measures on: the CPU or a CUDA device that exists; else ``ValueError``."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: expected cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA device available; pass --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: there are {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    return device


def config_from_args(args: argparse.Namespace, device: torch.device) -> BenchConfig:
    """Turn parsed ``vitzoo-bench`` arguments into a :class:`BenchConfig` with the defaults of ``device`` (the one
    :func:`check_device` returned for ``args.device``)."""
    on_gpu = device.type == "cuda"
    return BenchConfig(
        device=args.device, batch_size=args.batch_size if args.batch_size is not None else (256 if on_gpu else 8),
        train_batch_size=args.train_batch_size, scale_batch=args.scale_batch,
        precisions=tuple(args.precision or (["bf16"] if on_gpu else ["fp32"])), compile_modes=tuple(args.compile),
        bench=args.bench, num_warm_iter=args.num_warm_iter, num_bench_iter=args.num_bench_iter,
        latency_iters=args.latency_iters, max_phase_seconds=args.max_phase_seconds, count_macs=not args.no_macs,
        model_kwargs=parse_model_kwargs(args.model_kwargs),
    )


def _main_compare(parser: argparse.ArgumentParser, args: argparse.Namespace, device: torch.device) -> None:
    unsupported = sorted(set(args.compile) - set(COMPARE_COMPILE_MODES))
    if unsupported:
        parser.error(f"--compare measures --compile none, default and reduce-overhead; got {' '.join(unsupported)}")
    if args.resume:
        parser.error("--resume continues a sweep; --compare measures every model in one process, so it writes a "
                     "new --results-file")
    try:
        names = check_names(resolve_models(args.models))
        check_results_file(args.results_file, resume=False, resumable=False)
    except ValueError as error:
        parser.error(str(error))
    on_gpu = device.type == "cuda"
    config = CompareConfig(
        batch_size=args.batch_size if args.batch_size is not None else (256 if on_gpu else 8),
        train_batch_size=args.train_batch_size if args.train_batch_size is not None else (128 if on_gpu else 4),
        repeats=args.repeats, warm_steps=args.num_warm_iter,
        timed_steps=args.num_bench_iter, latency_steps=args.latency_iters, device=args.device,
        channels_last=args.channels_last,
    )
    if args.cuda_graph and not on_gpu:
        parser.error("--cuda-graph needs a CUDA device")
    modes = [*args.compile, *([CUDA_GRAPH] if args.cuda_graph else [])]
    run_compare(names, args.img_sizes, args.phases, modes, config, args.results_file,
                command=" ".join(["vitzoo-bench", *(sys.argv[1:])]), progress=not args.no_progress)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``vitzoo-bench`` / ``python -m vitzoo.bench.sweep``: run the sweep, print the summary table."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_ranges(args)
        device = check_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    if args.resume and args.results_file is None:
        parser.error("--resume needs --results-file")
    if args.compare:
        _main_compare(parser, args, device)
        return
    try:
        names = shard(resolve_models(args.models), args.shard)
        config = config_from_args(args, device)
        # before measuring: a results file that would be lost, or that could only fail to be written afterwards
        check_results_file(args.results_file, resume=args.resume)
        kept = measured_rows(args.results_file, config) if args.resume else []
    except ValueError as error:
        parser.error(str(error))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as timm's benchmark: fixed shapes, so let cuDNN pick its algorithms
    rows = run_benchmark(names, args.img_sizes, config, args.results_file, args.time_budget,
                         progress=not args.no_progress, kept=kept)
    print(format_table(rows))


if __name__ == "__main__":
    main()
