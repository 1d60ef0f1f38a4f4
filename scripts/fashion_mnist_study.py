"""The zoo's own evidence: every family on Fashion-MNIST with one recipe and budget, several seeds, one Pareto front.

One command runs the whole study and writes into ``--out``:

- ``seed<k>.csv``: one row per family and seed (``scripts/fashion_mnist_zoo.py`` with the full recipe);
- ``summary.csv``: per family the mean, standard deviation, min and max top-1 over the seeds, mean training time;
- ``bench.csv``: inference and training throughput of each family's model at 28x28 (``vitzoo-bench``);
- ``plots/``: measured top-1 vs measured throughput with the Pareto front, and the other ``vitzoo-pareto`` plots.

The full recipe (``configs/fashion_mnist.yaml``: width 64, depth 4, 2 heads, patch 4, crop and flip, 10 epochs over the
60000 training images) is meant for a GPU::

    python scripts/fashion_mnist_study.py --seeds 0 1 2 --out benchmarks/results/fashion_mnist_study precision=bf16

``--quick`` shrinks everything (two families, a few hundred images, one epoch) to check the pipeline on a CPU.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import fashion_mnist_zoo  # noqa: E402

from vitzoo import bench, pareto  # noqa: E402

# The recipe's model: what configs/fashion_mnist.yaml builds from each family's tiny entrypoint.
MODEL_KWARGS = ["embed_dim=64", "depth=4", "num_heads=2", "patch_size=4", "in_chans=1", "num_classes=10"]
SUMMARY_COLUMNS = ("model", "family", "dataset", "img_size", "top1", "top1_std", "top1_min", "top1_max", "top5",
                   "seeds", "updates", "train_seconds")


def summarize(seed_rows: list[dict[str, str]]) -> list[dict[str, object]]:
    """Aggregate per-seed zoo rows into one row per model: mean top-1 (``top1``) and its spread over the seeds."""
    by_model: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in seed_rows:
        by_model[row["model"]].append(row)
    summary = []
    for model, rows in by_model.items():
        top1 = [float(r["top1"]) for r in rows]
        summary.append({
            "model": model, "family": rows[0]["family"], "dataset": rows[0]["dataset"],
            "img_size": rows[0]["img_size"], "top1": round(statistics.fmean(top1), 3),
            "top1_std": round(statistics.stdev(top1), 3) if len(top1) > 1 else "",
            "top1_min": min(top1), "top1_max": max(top1),
            "top5": round(statistics.fmean(float(r["top5"]) for r in rows), 3), "seeds": len(rows),
            "updates": rows[0]["updates"],
            "train_seconds": round(statistics.fmean(float(r["train_seconds"]) for r in rows), 1),
        })
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--families", nargs="+", default=list(fashion_mnist_zoo.FAMILIES),
                        choices=fashion_mnist_zoo.FAMILIES)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fashion_mnist_study")
    parser.add_argument("--quick", action="store_true", help="a tiny run that checks the pipeline (CPU)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    args = parser.parse_intermixed_args(argv)

    train_samples, epochs, val_samples = (256, 1, 200) if args.quick else (60000, args.epochs, 10000)
    # The full recipe: patch 4 with crop and flip (the zoo's CPU budget run replaces these), batch 128, lr 2e-3.
    recipe = ["patch_size=4", "crop_pad=2", "hflip=0.5", "lr=2e-3", "batch_size=32" if args.quick else "batch_size=128"]
    args.out.mkdir(parents=True, exist_ok=True)
    seed_rows: list[dict[str, str]] = []
    for seed in args.seeds:
        results = args.out / f"seed{seed}.csv"
        fashion_mnist_zoo.main([
            "--families", *args.families, "--train-samples", str(train_samples), "--epochs", str(epochs),
            "--val-samples", str(val_samples), "--time-budget", "0", "--results", str(results),
            "--output", str(ROOT / "runs" / "fashion_mnist_study" / f"seed{seed}"),
            *recipe, f"seed={seed}", *args.overrides,
        ])
        seed_rows += pareto.read_csvs([results])
    summary = summarize(seed_rows)
    pareto.write_csv(args.out / "summary.csv", summary, SUMMARY_COLUMNS)

    models = [f"{family}_deit_tiny_patch16_224" for family in args.families]
    bench_args = ["--models", *models, "--img-sizes", "28", "--model-kwargs", *MODEL_KWARGS,
                  "--results-file", str(args.out / "bench.csv"), "--no-progress"]
    if args.quick:
        bench_args += ["--batch-size", "8", "--num-warm-iter", "1", "--num-bench-iter", "3", "--latency-iters", "3"]
    bench.main(bench_args)
    plot_args = ["--bench", str(args.out / "bench.csv"), "--results", str(args.out / "summary.csv"), "--no-published",
                 "--out", str(args.out / "plots")]
    if importlib.util.find_spec("matplotlib") is None:  # e.g. the GPU machine: plot later where matplotlib is
        print(f"matplotlib is not installed: draw the plots later with python -m vitzoo.pareto {' '.join(plot_args)}")
    else:
        pareto.main(plot_args)
    for row in summary:
        spread = f" +- {row['top1_std']}" if row["top1_std"] != "" else ""
        print(f"{row['family']:12s} top-1 {row['top1']:.2f}{spread} over {row['seeds']} seed(s)")


if __name__ == "__main__":
    main()
