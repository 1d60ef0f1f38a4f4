"""The Fashion-MNIST tables: the README's CPU main job and the GPU study of docs/benchmarks.md.

- :func:`budget_table`: one row per family of ``scripts/fashion_mnist_zoo.py``'s results CSV (what ``bash
  scripts/run.sh`` writes), followed by where and how it was measured, from the provenance JSON beside it;
- :func:`study_table`: the study's ``summary.csv`` (top-1 over seeds) joined with its ``vitzoo-bench`` rows at 28x28,
  best family first.
"""
from __future__ import annotations

import json
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from vitzoo.bench.common import read_csvs

BUDGET_MARKERS = ("<!-- fmnist-table:start -->", "<!-- fmnist-table:end -->")
STUDY_MARKERS = ("<!-- study-table:start -->", "<!-- study-table:end -->")
PIPELINE_MARKERS = ("<!-- data-pipeline-table:start -->", "<!-- data-pipeline-table:end -->")
IMAGENET_SHAPE_MARKERS = ("<!-- fashion-imagenet-table:start -->", "<!-- fashion-imagenet-table:end -->")
# how the study table names a family where the family's name alone would hide what it is
_STUDY_LABELS = {"qtvit": "QT-ViT-1", "fem": "fem (linear prior)", "linear": "linear (ReLU)",
                 "softmax": "softmax (reference line)"}


def budget_table(results: Path, root: Path = Path(".")) -> str:
    """The main job's table and its provenance line; ``results`` is the CSV (relative to ``root``, the repository),
    its ``.json`` the provenance."""
    info = json.loads((root / results).with_suffix(".json").read_text())
    lines = ["| family | model | top-1 | top-5 | params (M) | updates | train s | eval s |",
             "|---|---|---|---|---|---|---|---|"]
    for row in read_csvs([root / results]):
        lines.append(
            f"| {row['family']} | `{row['model']}` | {float(row['top1']):.2f} | {float(row['top5']):.2f} | "
            f"{float(row['param_count']):.2f} | {row['updates']} | {row['train_seconds']} | {row['eval_seconds']} |"
        )
    zoo_s, total_s = info["wall_time_s"].values()
    lines += [
        "",
        f"Measured on {info['machine']}, on {info['date'][:10]} (torch {info['torch']}, {info['kernel_backend']} "
        f"kernels) from a clean clone: {zoo_s} s for the {len(lines) - 2} families, "
        f"{total_s // 60} min {total_s % 60} s with the set-up check (`{info['command']}`); results file "
        f"`{results.as_posix()}`.",
    ]
    return "\n".join(lines)


def _two_places(value: str) -> str:
    # half up, as the CSV's three-decimal values are read by people (0.125 -> 0.13)
    return str(Decimal(value).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def study_table(summary: Path, bench: list[Path]) -> str:
    """Top-1 mean +- std, min / max over the seeds, and inference / training img/s at 28x28, best top-1 first."""
    speed = {row["model"]: row for row in read_csvs(bench)}
    rows = sorted(read_csvs([summary]), key=lambda row: -float(row["top1"]))
    seeds = "/".join(sorted({row["seeds"] for row in rows}))
    lines = [f"| family | top-1 (mean +- std over {seeds} seeds) | min / max | infer img/s at 28x28 | "
             "train img/s at 28x28 |", "|---|---|---|---|---|"]
    for row in rows:
        measured = speed[row["model"]]
        lines.append(
            f"| {_STUDY_LABELS.get(row['family'], row['family'])} | {_two_places(row['top1'])} +- "
            f"{_two_places(row['top1_std'])} | {_two_places(row['top1_min'])} / {_two_places(row['top1_max'])} | "
            f"{float(measured['infer_samples_per_sec']):,.0f} | {float(measured['train_samples_per_sec']):,.0f} |"
        )
    return "\n".join(lines)


def imagenet_shape_table(results: Path) -> str:
    """The ImageNet-shaped Fashion-MNIST runs: top-1 per epoch, end-to-end and model-only training img/s."""
    data = json.loads(results.read_text())
    info = data["info"]
    lines = ["| model | epochs | top-1 / top-5 after each epoch | end-to-end train img/s | model-only train img/s | "
             "end-to-end / model-only |", "|---|---|---|---|---|---|"]
    for row in data["rows"]:
        epochs = ", ".join(f"{e['top1']:.1f} / {e['top5']:.1f}" for e in row["per_epoch"])
        if row["end_to_end_img_per_s"] is None:
            end_to_end, share = row["status"], ""
        else:
            end_to_end, share = f"{row['end_to_end_img_per_s']:,.0f}", f"{row['end_to_end_over_model_only']:.2f}"
        lines.append(f"| `{row['model']}` | {row['epochs_done']} | {epochs} | {end_to_end} | "
                     f"{row['model_only_train_img_per_s']:,.0f} | {share} |")
    lines += ["", f"Measured on {info['device']} ({info['cpu_count']} CPU cores), torch {info['torch']}, "
              f"torchvision {info['torchvision']}, Pillow {info['pillow']}, {info['date'][:10]}, code at "
              f"`{info['git_revision']}`. {info['dataset']}; {info['recipe']}. End-to-end: {info['end_to_end']}. "
              f"Model-only: {info['model_only']}. Commands: " + "; ".join(f"`{c}`" for c in info["commands"]) + "."]
    return "\n".join(lines)


def pipeline_table(results: Path) -> str:
    """``benchmarks/data_pipeline.py``'s result: ms per image of each stage of the training pipeline, and loaders."""
    data = json.loads(results.read_text())
    info, stages = data["info"], data["stages_ms_per_image"]
    lines = ["| stage | ms per image |", "|---|---|"]
    lines += [f"| {name} | {ms:.2f} |" for name, ms in stages.items()]
    lines.append(f"| total (one core: {data['img_per_s_per_core']:,.0f} img/s) | {sum(stages.values()):.2f} |")
    loaders = ", ".join(f"{row['workers']} worker(s) {row['output']} {row['img_per_s']:,.0f} img/s"
                        for row in data["loaders"])
    lines += ["", f"Measured on {info['machine']}, torch {info['torch']}, timm {info['timm']}, "
              f"Pillow {info['pillow']}, {info['date'][:10]}, code at `{info['git_revision'][:7]}`: "
              f"`{info['config']}`'s transform on 256 px JPEGs; DataLoader at batch {info['batch_size']}: "
              f"{loaders}. Command: `{info['command']}`."]
    return "\n".join(lines)
