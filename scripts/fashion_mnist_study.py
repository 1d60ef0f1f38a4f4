"""The zoo's own evidence: every family on Fashion-MNIST with one recipe and budget, several seeds, one Pareto front.

One command runs the whole study and writes into ``--out``:

- ``runs.csv``: one row per seed and family (``scripts/fashion_mnist_zoo.py`` with the study's recipe);
- ``bench.csv``: inference and training throughput of each family's model at 28x28 (``vitzoo-bench``);
- ``plots/``: measured top-1 (the mean over the seeds in ``runs.csv``) vs measured throughput with the Pareto front,
  and the other ``vitzoo-pareto`` plots.

The recipe: every DeiT family at width 128, depth 6, 4 heads, patch 4 (49 tokens + cls), drop path 0.1, pad-2 crop
and flip (on the training device, per batch), AdamW lr 3e-3 with 5 warm-up epochs and a cosine decay, batch 512,
60 epochs over the 60000 training images, evaluated on the 10000 test images; ``FAMILY_RECIPES`` lists what some
families needed instead (more epochs, a smaller patch); QT-ViT-1 in its own EfficientViT shape with the same data,
optimiser and epochs. Ten epochs at batch 128 left the families 82-91% apart by how fast they start (ZeroS 82%,
softmax 86%); the long schedule lets each converge.
It is meant for a GPU::

    python scripts/fashion_mnist_study.py --seeds 0 1 2 --jobs 10 precision=bf16 workers=1 cuda_graph=true

``--jobs`` trains that many (seed, family) runs at once, one process each, spread over the visible GPUs: these small
models keep the host busy launching kernels and leave a GPU mostly idle, so several runs share one well. Adding
``cuda_graph=true`` replays each run's forward and backward from CUDA graphs, which removes most of that host work;
the runs then wait on the GPU rather than on the host, and fewer jobs at once fill it. Each run
writes its row to ``seed<k>.<family>.part.csv``; they are folded into ``runs.csv``. A study that is cut off
resumes where it stopped (rerun the same command): finished runs are not trained again, a run that was cut off
continues from its last epoch's checkpoint (its run folder under ``--runs``), and
``--no-new-after`` stops starting runs so that a call can end inside a time limit.
``--quick`` shrinks everything (a few hundred images, one epoch) to check the pipeline on a CPU.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import fashion_mnist_zoo  # noqa: E402

from vitzoo.bench import sweep as bench  # noqa: E402
from vitzoo.bench.common import read_csvs, write_csv  # noqa: E402
from vitzoo.report import pareto  # noqa: E402
from vitzoo.train.config import ConfigError  # noqa: E402

# The study's DeiT shape, larger than configs/fashion_mnist.yaml's CPU shape (64/4/2): on a GPU these models are
# bound by kernel launches, so width costs almost nothing.
EMBED_DIM, DEPTH, NUM_HEADS, PATCH_SIZE = 128, 6, 4, 4
DEIT_SHAPE = f"model_kwargs={{embed_dim: {EMBED_DIM}, depth: {DEPTH}, num_heads: {NUM_HEADS}}}"
DEIT_BENCH_KWARGS = [f"embed_dim={EMBED_DIM}", f"depth={DEPTH}", f"num_heads={NUM_HEADS}", "in_chans=1",
                     "num_classes=10"]
QTVIT_BENCH_KWARGS = ["in_chans=1", "num_classes=10"]
# 28x28 images at patch 4 are 50 tokens: at timm's batch 256 a step is a few ms of kernel launches, not GPU work,
# so the GPU benchmark uses 1024 images (~50k tokens a step, as the zoo sweep's batches).
GPU_BENCH_BATCH = 1024
EPOCHS = 60
# What a family needed beyond the shared recipe. QT and ZeroS stayed below 92% top-1 at 60 epochs (91.6% each, mean
# of 3 seeds, against 92.2-93.3% for the other DeiT families): they train longer. DeltaNet, the best at patch 4
# (93.26%), was given more tokens (93.86% at patch 2, 196 tokens + cls, 60 epochs) and then more epochs (94.01% at
# patch 2, 100 epochs).
FAMILY_RECIPES: dict[str, dict[str, int]] = {"qt": {"epochs": 100}, "zeros": {"epochs": 100},
                                             "deltanet": {"patch_size": 2, "epochs": 100}}


class Recipe(NamedTuple):
    """What sets a family's run apart in the study: its epochs and its patch size (None: QT-ViT has no patches)."""

    epochs: int
    patch_size: int | str | None  # a str only for an override that is no number, which the config check rejects

    def args(self) -> list[str]:
        """The zoo's arguments for this recipe (they go before the user's overrides, which win)."""
        return ["--epochs", str(self.epochs), *([f"patch_size={self.patch_size}"] if self.patch_size else [])]


def recipes(families: list[str], epochs: int | None = None, overrides: Sequence[str] = ()) -> dict[str, Recipe]:
    """Each family's recipe: ``epochs`` for every family when given, else the study's (``EPOCHS``,
    ``FAMILY_RECIPES``); the patch size of ``FAMILY_RECIPES`` or ``PATCH_SIZE``, unless ``overrides`` set one."""
    patch_override = [item.split("=", 1)[1] for item in overrides if item.startswith("patch_size=")]
    chosen = {}
    for family in families:
        own = FAMILY_RECIPES.get(family, {})
        patch = None if family in fashion_mnist_zoo.OWN_ARCHITECTURE else (
            _as_int(patch_override[-1]) if patch_override else own.get("patch_size", PATCH_SIZE))
        chosen[family] = Recipe(epochs if epochs is not None else own.get("epochs", EPOCHS), patch)
    return chosen


def _as_int(text: str) -> int | str:
    """An override's value as a number where it is one (else as given: the config check rejects it in one line)."""
    try:
        return int(text)
    except ValueError:
        return text


def _visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES entries."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed or [str(i) for i in range(torch.cuda.device_count())]


RUN_COLUMNS = ("seed", *fashion_mnist_zoo.COLUMNS)


def _part_files(out: Path) -> dict[Path, int]:
    """The part files ``seed<k>.<family>.part.csv`` of runs that ended or were cut off, with their seeds."""
    return {path: int(path.name.split(".")[0].removeprefix("seed")) for path in sorted(out.glob("seed*.*.part.csv"))}


def _finished_rows(out: Path, parts: dict[Path, int]) -> list[dict[str, str]]:
    """Finished rows so far, one per (seed, family): ``runs.csv`` plus ``parts``. Rows of failed runs (status
    "error: ...") are left out, so the next run trains those families again."""
    runs = out / "runs.csv"
    rows = read_csvs([runs]) if runs.is_file() else []
    for part, seed in parts.items():
        rows += [row | {"seed": str(seed)} for row in read_csvs([part])]
    finished = [row for row in rows if row.get("status") in (None, "", "ok")]
    return list({(row["seed"], row["family"]): row for row in finished}.values())


def merge_runs(out: Path) -> list[dict[str, str]]:
    """Fold the part files into ``runs.csv`` (one row per seed and family) and delete them; return its rows."""
    parts = _part_files(out)
    rows = _finished_rows(out, parts)
    if rows or (out / "runs.csv").is_file():
        write_csv(out / "runs.csv", sorted(rows, key=lambda row: int(row["seed"])), RUN_COLUMNS)
    for part in parts:
        part.unlink()
    return rows


def pending_units(out: Path, seeds: list[int], chosen: dict[str, Recipe]) -> list[tuple[int, str]]:
    """The (seed, family) runs of the families in ``chosen`` without a finished row of their recipe, seed-major:
    every family gets its first seed before any gets a second (the part files of earlier runs are folded in first)."""
    return _without_rows(merge_runs(out), seeds, chosen)


def _current(rows: list[dict[str, str]], chosen: dict[str, Recipe]) -> list[dict[str, str]]:
    """The rows of the families in ``chosen`` trained with their recipe's epochs and patch size (a row of another
    recipe is from an earlier study and is trained again)."""
    def matches(row: dict[str, str]) -> bool:
        recipe = chosen[row["family"]]
        patch = "" if recipe.patch_size is None else str(recipe.patch_size)
        return row.get("epochs") == str(recipe.epochs) and row.get("patch_size", "") == patch

    return [row for row in rows if row["family"] in chosen and matches(row)]


def _without_rows(rows: list[dict[str, str]], seeds: list[int], chosen: dict[str, Recipe]) -> list[tuple[int, str]]:
    """The (seed, family) pairs, seed-major, that have no current row in ``rows``."""
    done = {(int(row["seed"]), row["family"]) for row in _current(rows, chosen)}
    return [(seed, family) for seed in seeds for family in chosen if (seed, family) not in done]


def train_unit(out: Path, runs: Path, seed: int, family: str, recipe: Recipe, shared: list[str],
               overrides: list[str]) -> None:
    """Train one family with one seed and its recipe into its own part file (several of these may run at once), its
    run folder (checkpoints, log) under ``runs/seed<k>/``; ``shared``: the study's arguments, ``overrides``: the
    user's, which win over the recipe."""
    fashion_mnist_zoo.main(["--families", family, "--results", str(out / f"seed{seed}.{family}.part.csv"),
                            "--resume", *shared, *recipe.args(), *overrides, f"seed={seed}",
                            "--output", str(runs / f"seed{seed}")])


def run_units(args: argparse.Namespace, units: list[tuple[int, str]]) -> None:
    """Train ``units`` (seed, family) in up to ``--jobs`` processes at once, spread over the visible GPUs, starting
    none after ``--no-new-after`` seconds. A run that fails or is cut off just leaves no finished row."""
    # The overrides go first: after --families or --seeds (nargs='+') they would be read as more of those.
    command = [sys.executable, __file__, *args.overrides, "--out", str(args.out), "--runs", str(args.runs),
               *(["--epochs", str(args.epochs)] if args.epochs is not None else []),
               *(["--quick"] if args.quick else [])]
    devices, started, began = _visible_gpus(), 0, time.time()
    pending, running = list(units), []
    # A study stopped by SIGTERM (e.g. `timeout`) or Ctrl-C takes its runs with it rather than leaving them orphaned
    # on the GPUs; their finished rows are already in the part files.
    previous_handler = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        while pending or running:
            if args.no_new_after is not None and time.time() - began > args.no_new_after:
                pending.clear()
            while pending and len(running) < args.jobs:
                seed, family = pending.pop(0)
                env = dict(os.environ)
                if len(devices) > 1:
                    env["CUDA_VISIBLE_DEVICES"] = devices[started % len(devices)]
                started += 1
                running.append(subprocess.Popen([*command, "--unit", str(seed), family], env=env))
            time.sleep(0.5)
            running = [process for process in running if process.poll() is None]
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        for process in running:
            process.terminate()
        for process in running:
            process.wait()


def _exit_on_sigterm(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    # QT-ViT-1 first: its runs take about three times a DeiT family's, and one started last ends the study late.
    parser.add_argument("--families", nargs="+", choices=fashion_mnist_zoo.FAMILIES,
                        default=sorted(fashion_mnist_zoo.FAMILIES, key=lambda family: family != "qtvit"))
    parser.add_argument("--epochs", type=int,
                        help=f"epochs of every family (default: {EPOCHS}, or the family's in FAMILY_RECIPES)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="(seed, family) runs trained at the same time, one process each")
    parser.add_argument("--no-new-after", type=float, metavar="SECONDS",
                        help="start no new run after this many seconds (to end inside a time limit; rerun the same "
                             "command to go on)")
    parser.add_argument("--unit", nargs=2, metavar=("SEED", "FAMILY"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fashion_mnist_study")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "fashion_mnist_study",
                        help="the runs' folders (checkpoints and logs; a cut-off run continues from them)")
    parser.add_argument("--train-only", action="store_true", help="train the seeds; no summary, benchmark or plots")
    parser.add_argument("--quick", action="store_true", help="a tiny run that checks the pipeline (CPU)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    args = parser.parse_intermixed_args(argv)

    train_samples, val_samples = (256, 200) if args.quick else (60000, 10000)
    every_family = 1 if args.quick else args.epochs  # None: each family's own epochs
    chosen = recipes(args.families, every_family, args.overrides)
    shared = [DEIT_SHAPE, "drop_path=0.1", "crop_pad=2", "hflip=0.5", "augment_on_device=true", "lr=3e-3",
              *(["batch_size=32", "warmup_epochs=0"] if args.quick else ["batch_size=512", "warmup_epochs=5"])]
    shared = ["--train-samples", str(train_samples), "--val-samples", str(val_samples), "--time-budget", "0", *shared]
    for family, recipe in chosen.items() if not args.unit else ():  # a wrong override: one line, before any run
        try:
            fashion_mnist_zoo.family_config(family, fashion_mnist_zoo.parse_args(
                ["--families", family, *shared, *recipe.args(), *args.overrides], check=False))
        except ConfigError as error:
            parser.error(str(error))
    args.out.mkdir(parents=True, exist_ok=True)
    if args.unit:
        family = args.unit[1]
        train_unit(args.out, args.runs, int(args.unit[0]), family, chosen[family], shared, args.overrides)
        return
    run_units(args, pending_units(args.out, args.seeds, chosen))
    rows = merge_runs(args.out)
    seed_rows = [row for row in _current(rows, chosen) if int(row["seed"]) in args.seeds]
    missing = [f"{family} seed {seed}" for seed, family in _without_rows(rows, args.seeds, chosen)]
    failure = (f"fashion_mnist_study: not trained yet (failed or not started): {', '.join(missing)}; run the same "
               "command to go on")
    if args.train_only or not seed_rows:
        if missing:
            raise SystemExit(failure)
        return
    # one benchmark per model shape (QT-ViT's, and the DeiT shape at each patch size), gathered into bench.csv
    shapes: dict[str, list[str]] = defaultdict(list)
    for family in args.families:
        patch = chosen[family].patch_size
        shapes["qtvit" if patch is None else f"deit_patch{patch}"].append(family)
    bench_parts = []
    for shape, families in shapes.items():
        kwargs = QTVIT_BENCH_KWARGS if shape == "qtvit" else [
            *DEIT_BENCH_KWARGS, f"patch_size={chosen[families[0]].patch_size}"]
        bench_parts.append(args.out / f"bench.{shape}.part.csv")
        bench_args = ["--models", *(fashion_mnist_zoo.MODELS[f] for f in families), "--img-sizes", "28",
                      "--model-kwargs", *kwargs, "--results-file", str(bench_parts[-1]), "--no-progress"]
        if args.quick:
            bench_args += ["--batch-size", "8", "--num-warm-iter", "1", "--num-bench-iter", "3", "--latency-iters",
                           "3"]
        elif torch.cuda.is_available():
            bench_args += ["--batch-size", str(GPU_BENCH_BATCH)]
        if bench_parts[-1].exists():  # a study cut off during its benchmark: keep the rows it measured
            bench_args.append("--resume")
        bench.main(bench_args)
    bench_rows = read_csvs(bench_parts)
    write_csv(args.out / "bench.csv", bench_rows, list(bench_rows[0]))
    for part in bench_parts:
        part.unlink()
    plot_args = ["--bench", str(args.out / "bench.csv"), "--results", str(args.out / "runs.csv"), "--no-published",
                 "--reference", "softmax",
                 "--out", str(args.out / "plots")]
    if importlib.util.find_spec("matplotlib") is None:  # plot later where matplotlib is
        print("matplotlib is not installed: draw the plots later with "
              f"python -m vitzoo.report.pareto {' '.join(plot_args)}")
    else:
        pareto.main(plot_args)
    for row in pareto.summarize_seeds(seed_rows):
        spread = f" +- {row['top1_std']}" if row["top1_std"] != "" else ""
        print(f"{row['family']:12s} top-1 {row['top1']:.2f}{spread} over {row['seeds']} seed(s)")
    if missing:
        raise SystemExit(failure)


if __name__ == "__main__":
    main()
