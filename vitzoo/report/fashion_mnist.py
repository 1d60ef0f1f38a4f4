"""The Fashion-MNIST tables: the README's CPU main job and the GPU study of docs/benchmarks.md.

- :func:`budget_table`: one row per family of ``scripts/fashion_mnist_zoo.py``'s results CSV (what ``bash
  scripts/run.sh`` writes), followed by where and how it was measured, from the provenance JSON beside it;
- :func:`study_table`: the study's ``runs.csv`` (top-1 over seeds) joined with its ``vitzoo-bench`` rows at 28x28,
  best family first;
- :func:`imagenet_shape_table` and :func:`imagenet_shape_plot`: the ImageNet-shaped Fashion-MNIST runs at 224 px.
"""
from __future__ import annotations

import json
import statistics
import tempfile
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from vitzoo.bench.common import read_csvs, write_csv
from vitzoo.report import pareto

BUDGET_MARKERS = ("<!-- fmnist-table:start -->", "<!-- fmnist-table:end -->")
STUDY_MARKERS = ("<!-- study-table:start -->", "<!-- study-table:end -->")
PIPELINE_MARKERS = ("<!-- data-pipeline-table:start -->", "<!-- data-pipeline-table:end -->")
GPU_PIPELINE_MARKERS = ("<!-- data-pipeline-gpu-table:start -->", "<!-- data-pipeline-gpu-table:end -->")
IMAGENET_SHAPE_MARKERS = ("<!-- fashion-imagenet-table:start -->", "<!-- fashion-imagenet-table:end -->")
IMAGENET_SHAPE_H100_MARKERS = ("<!-- fashion-imagenet-h100-table:start -->", "<!-- fashion-imagenet-h100-table:end -->")
RECIPE_LENGTH_MARKERS = ("<!-- fashion-imagenet-30-epochs-table:start -->",
                         "<!-- fashion-imagenet-30-epochs-table:end -->")
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


def _two_places(value: str | float) -> str:
    # half up, as the three-decimal means are read by people (0.125 -> 0.13); str() first: a float's shortest
    # decimal form, not its binary expansion (0.125 is exact, 0.145 is 0.14499... in binary)
    return str(Decimal(str(value)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def study_table(runs: Path, bench: list[Path]) -> str:
    """The study's ``runs.csv`` (one row per seed and family) as patch size, epochs, seeds, top-1 mean +- std (std
    from two seeds up), min / max over the seeds, and inference / training img/s at 28x28, best top-1 first; a family
    without a benchmark row shows "-" for its speeds, one without patches (QT-ViT) "-" for its patch."""
    speed = {row["model"]: row for row in read_csvs(bench)}
    rows = sorted(pareto.summarize_seeds(read_csvs([runs])), key=lambda row: -row["top1"])
    lines = ["| family | patch | epochs | seeds | top-1 (mean +- std) | min / max | infer img/s at 28x28 "
             "| train img/s at 28x28 |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        measured = speed.get(row["model"])
        spread = f" +- {_two_places(row['top1_std'])}" if row["top1_std"] else ""
        rates = (f"{float(measured['infer_samples_per_sec']):,.0f} | {float(measured['train_samples_per_sec']):,.0f}"
                 if measured else "- | -")
        label = _STUDY_LABELS.get(row["family"], row["family"])
        lines.append(f"| {label} | {row.get('patch_size') or '-'} | {row['epochs']} | {row['seeds']} | "
                     f"{_two_places(row['top1'])}{spread} | "
                     f"{_two_places(row['top1_min'])} / {_two_places(row['top1_max'])} | {rates} |")
    return "\n".join(lines)


DEFAULT_PIPELINE = "loader RandAugment, eager steps"  # the recipe as written: the plot averages its seeds only


def run_pipeline(config: dict) -> str:
    """Where an ImageNet-shaped run's RandAugment (and JPEG decoding) ran, how its training steps ran, whether its
    images came from a packed store and its memory format, from its saved config."""
    augment = "device" if config.get("augment_on_device") else "loader"
    steps = "CUDA-graph" if config.get("cuda_graph") else "eager"
    name = f"{augment} RandAugment, {steps} steps"
    if config.get("decode_on_device"):
        name += ", device decoding"
    elif config.get("crop_on_device"):
        name += ", device crops"
    if config.get("dataset") == "packed":
        name += ", packed store"
    if config.get("channels_last"):
        name += ", channels-last"
    return name


def _mean_spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} +- {statistics.stdev(values):.2f}"


def imagenet_shape_summary(data: dict) -> str:
    """One line per model and pipeline of the ImageNet-shaped runs: finished seeds, final top-1 (mean +- std over
    them, min / max), and end-to-end training img/s against model-only, from the runs that had the GPU to
    themselves (runs that shared it are counted for accuracy only)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in data["rows"]:
        groups.setdefault((row["model"], row["pipeline"]), []).append(row)
    lines = ["| model | pipeline | finished seeds | final top-1 (mean +- std) | min / max | end-to-end train img/s, "
             "alone on the GPU | model-only train img/s | end-to-end / model-only |",
             "|---|---|---|---|---|---|---|---|"]
    for (model, pipeline), runs in sorted(groups.items()):
        finished = [run for run in runs if run["final_eval"]]
        top1 = [run["final_eval"]["top1"] for run in finished]
        alone = [run for run in runs if run.get("runs_per_gpu", 1) == 1 and run["end_to_end_img_per_s"]]
        speed = ", ".join(f"{run['end_to_end_img_per_s']:,.0f}" for run in alone) or "-"
        model_only = f"{alone[0]['model_only_train_img_per_s']:,.0f}" if alone and alone[0][
            "model_only_train_img_per_s"] else "-"
        share = ", ".join(f"{run['end_to_end_over_model_only']:.2f}" for run in alone
                          if run["end_to_end_over_model_only"]) or "-"
        lines.append(f"| `{model}` | {pipeline} | {len(finished)} of {len(runs)} | "
                     f"{_mean_spread(top1) if top1 else '-'} | "
                     f"{f'{min(top1):.2f} / {max(top1):.2f}' if top1 else '-'} | {speed} | {model_only} | {share} |")
    return "\n".join(lines)


def imagenet_shape_table(results: Path) -> str:
    """The ImageNet-shaped Fashion-MNIST runs (``scripts/fashion_imagenet_results.py``'s JSON): the summary over
    seeds (:func:`imagenet_shape_summary`), then every run in a folded block: top-1 after each epoch and at the end,
    end-to-end against model-only training img/s, inference img/s."""
    data = json.loads(results.read_text())
    info = data["info"]
    lines = [imagenet_shape_summary(data), "", "<details><summary>Every run</summary>", "",
             "| model | seed | pipeline | top-1 / top-5 after each epoch | final top-1 / top-5 | end-to-end train "
             "img/s (steady) | model-only train img/s | end-to-end / model-only | infer img/s | status |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in data["rows"]:
        epochs = ", ".join(f"{e['top1']:.1f} / {e['top5']:.1f}" for e in row["per_epoch"])
        final = row["final_eval"]
        final_text = f"{final['top1']:.2f} / {final['top5']:.2f}" + (" (EMA)" if final["weights"] == "ema" else "") \
            if final else "-"
        speed = (f"{row['end_to_end_img_per_s']:,.0f} ({row['steady_end_to_end_img_per_s']:,.0f})"
                 if row["end_to_end_img_per_s"] and row["steady_end_to_end_img_per_s"] else "-")
        share = f"{row['end_to_end_over_model_only']:.2f}" if row["end_to_end_over_model_only"] else "-"
        model_only = f"{row['model_only_train_img_per_s']:,.0f}" if row["model_only_train_img_per_s"] else "-"
        infer = f"{row['infer_img_per_s']:,.0f}" if row["infer_img_per_s"] else "-"
        shared = f" (GPU shared by {row['runs_per_gpu']} runs)" if row.get("runs_per_gpu", 1) > 1 else ""
        lines.append(f"| `{row['model']}` | {row['seed']} | {row['pipeline']} | {epochs} | "
                     f"{final_text} | {speed}{shared} | {model_only} | "
                     f"{share} | {infer} | {row['status']} |")
    lines += ["", "</details>", "",
              f"Measured on {info['device']} ({info['cpu_count']} CPU cores), torch {info['torch']}, "
              + "".join(f"{name} {info[key]}, " for key, name in (("torchvision", "torchvision"), ("pillow", "Pillow"))
                        if key in info)
              + f"{info['date']} (each run's code revision: its row in the results file). "
              f"{info['dataset']}; {info['recipe']}. End-to-end: {info['end_to_end']}. "
              f"Model-only: {info['model_only']}. "
              + (f"Pipelines: {info['pipelines']}. " if "pipelines" in info else "")
              + "Commands: " + "; ".join(f"`{c}`" for c in info["commands"]) + "."]
    return "\n".join(lines)


def recipe_length_table(results: Path, section: str) -> str:
    """The ImageNet-shaped runs through the recipes' full length (``section`` of the results JSON, as
    ``scripts/fashion_imagenet_results.py --section`` folds them): per run whether it finished, stopped or hit a
    non-finite loss, its epochs, top-1 along the way and at the end, and its logged training loss (first, highest,
    last), which is where a spike would show."""
    data = json.loads(results.read_text())[section]
    info = data["info"]
    lines = ["| model | status | epochs done | top-1 after epoch 1 / 10 / 20 / last done | final top-1 / top-5 | "
             "training loss: first / highest / last logged | loss records |",
             "|---|---|---|---|---|---|---|"]
    for row in sorted(data["rows"], key=lambda row: row["model"]):
        epochs = row["per_epoch"]
        along = " / ".join(f"{epochs[i]['top1']:.1f}" if i < len(epochs) else "-" for i in (0, 9, 19)) + (
            f" / {epochs[-1]['top1']:.1f} (epoch {epochs[-1]['epoch']})" if epochs else " / -")
        final = row["final_eval"]
        final_text = f"{final['top1']:.2f} / {final['top5']:.2f}" if final else "-"
        losses = [loss for _, loss in row["train_loss_log"]]
        loss_text = f"{losses[0]:.3f} / {max(losses):.3f} / {losses[-1]:.3f}" if losses else "-"
        lines.append(f"| `{row['model']}` | {row['status']} | {row['epochs_done']} | {along} | {final_text} | "
                     f"{loss_text} | {len(losses)} |")
    lines += ["", f"Measured on {info['device']} ({info['cpu_count']} CPU cores), torch {info['torch']}, "
              f"{info['date']} (each run's code revision: its row in the results file). {info['dataset']}; "
              f"{info['recipe']}. {info['pipelines']}. Commands: "
              + "; ".join(f"`{c}`" for c in info["commands"]) + "."]
    return "\n".join(lines)


def imagenet_shape_points(data: dict) -> tuple[list[dict], list[dict]]:
    """The plot's inputs from the results JSON: per model its mean final top-1 over the finished seeds of one
    pipeline (with their spread) and its benchmark row. Unfinished runs are left out; the pipeline is the one with the
    most finished seeds of that model (ties: the recipe's, then the name), as the same seed through another pipeline
    is not another sample."""
    by_pipeline: dict[str, dict[str, list[dict]]] = {}
    for row in data["rows"]:
        if row["final_eval"] and row["bench"]:
            by_pipeline.setdefault(row["model"], {}).setdefault(row["pipeline"], []).append(row)
    accuracy, bench = [], []
    for model, pipelines in by_pipeline.items():
        runs = max(pipelines.values(), key=lambda runs: (len(runs), runs[0]["pipeline"] == DEFAULT_PIPELINE,
                                                         runs[0]["pipeline"]))
        top1 = [run["final_eval"]["top1"] for run in runs]
        accuracy.append({"model": model, "top1": round(statistics.fmean(top1), 3), "img_size": 224,
                         "top1_std": round(statistics.stdev(top1), 3) if len(top1) > 1 else "",
                         "dataset": "ImageNet-shaped Fashion-MNIST"})
        bench.append({"model": model, **runs[-1]["bench"]})
    return accuracy, bench


def imagenet_shape_plot(results: Path, target: Path, speeds: dict[str, float] | None = None) -> list[Path]:
    """Draw the ImageNet-shaped runs' final top-1 (:func:`imagenet_shape_points`) against the same models' inference
    img/s at 224 px, the front highlighted and the softmax twin as the reference line, into ``target`` (a PNG).

    ``speeds`` (model -> img/s replayed from CUDA graphs, as
    :func:`vitzoo.report.speed_report.graphed_inference` reads them from a comparison) replace the runs' own eager
    benchmark rows, which follow the host's load; ValueError names a plotted model it lacks."""
    accuracy, bench = imagenet_shape_points(json.loads(results.read_text()))
    if speeds is not None:
        missing = [row["model"] for row in bench if row["model"] not in speeds]
        if missing:
            raise ValueError(f"no CUDA-graph inference speed at 224 px for {', '.join(missing)}; measure them with "
                             "vitzoo-bench --compare --cuda-graph")
        bench = [row | {"infer_samples_per_sec": speeds[row["model"]], "compile": "cuda-graph"} for row in bench]
    with tempfile.TemporaryDirectory() as folder:
        accuracy_csv, bench_csv = Path(folder) / "top1.csv", Path(folder) / "bench.csv"
        write_csv(accuracy_csv, accuracy, ("model", "top1", "top1_std", "img_size", "dataset"))
        write_csv(bench_csv, bench, ("model", *pareto.BENCH_KEYS))
        return pareto.save_plots([bench_csv], [accuracy_csv], {"top1_vs_throughput": target}, use_published=False,
                                 reference="softmax")


def pipeline_table(results: Path) -> str:
    """``benchmarks/data_pipeline.py``'s result: ms per image of each stage of the training pipeline, and loaders."""
    data = json.loads(results.read_text())
    info, stages = data["info"], data["stages_ms_per_image"]
    lines = ["| stage | ms per image |", "|---|---|"]
    lines += [f"| {name} | {ms:.2f} |" for name, ms in stages.items()]
    lines.append(f"| total (one core: {data['img_per_s_per_core']:,.0f} img/s) | {sum(stages.values()):.2f} |")
    loaders = ", ".join(f"{row['workers']} worker(s) {row['output']} {row['img_per_s']:,.0f} img/s"
                        for row in data["loaders"])
    decode = data.get("device_decode")
    if decode:
        loaders += (f"; decoding and cropping batches of {decode['batch_size']} on the device "
                    f"({decode['device']}): {decode['ms_per_image']:.2f} ms per image")
    lines += ["", f"Measured on {info['machine']}, torch {info['torch']}, timm {info['timm']}, "
              f"Pillow {info['pillow']}, {info['date'][:10]}: "
              f"`{info['config']}`'s transform on 256 px JPEGs; DataLoader at batch {info['batch_size']}: "
              f"{loaders}. Command: `{info['command']}`."]
    return "\n".join(lines)


TRAINING_PROFILE_MARKERS = ("<!-- training-profile-table:start -->", "<!-- training-profile-table:end -->")


def training_profile_table(results: Sequence[Path], shown: Sequence[Path]) -> str:
    """``benchmarks/profile_training.py``'s results files ``results`` (named ``shown`` in the table's provenance
    lines): per training update, each stage's host and device ms, the loop's wait, the GPU's busy time and launches,
    one row per profiled run, the files' runs one after another."""
    stage_names = ("load", "decode", "augment", "step")
    lines = ["| GPU | model | overrides | img/s (wall ms per update) | "
             + " | ".join(f"{name}: host / device ms" for name in stage_names)
             + " | loop waits, ms | GPU busy, ms | launches | code |",
             "|---|---|---|---|" + "---|" * len(stage_names) + "---|---|---|---|"]
    provenance = []
    for path, name in zip(results, shown, strict=True):
        runs = json.loads(path.read_text())["runs"]
        for run in runs:
            profile, info = run["profile"], run["info"]
            stages = profile["stages"]
            cells = [f"{stages[stage]['host_ms']:.1f} / {stages[stage]['device_ms']:.1f}" if stage in stages else "-"
                     for stage in stage_names]
            busy, launches = profile.get("device_busy_ms"), profile.get("launches")
            lines.append(f"| {info['device']} | `{run['model']}` | {' '.join(run['overrides']) or '-'} | "
                         f"{profile['img_per_s_from_wall']:,.0f} ({profile['wall_ms']:.1f}) | " + " | ".join(cells)
                         + f" | {profile['loop_other_ms']:.1f} | {'-' if busy is None else f'{busy:.1f}'} | "
                         f"{'-' if launches is None else f'{launches:,.0f}'} | {info['git_revision'][:7] or '-'} |")
        if runs:
            first = runs[0]["info"]
            provenance.append(f"{first['device']}, torch {first['torch']}, triton {first.get('triton', '-')}, "
                              f"{first['date'][:10]}, {first.get('cpu_count', '-')} CPU cores; each run's command is "
                              f"in `{name.as_posix()}`.")
    return "\n".join(lines + (["", " ".join(provenance)] if provenance else []))
