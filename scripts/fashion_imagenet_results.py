"""Fold runs of ``scripts/fashion_imagenet_run.sh`` and a benchmark of the same models into one results file.

Reads, for every run folder ``<family>-seed<k>`` under ``--runs``: ``config.yaml`` and ``log.jsonl`` (train.py's), and
its row in the ``--eval`` CSV (eval.py's evaluation of the last checkpoint, the EMA where the recipe keeps one); and
the ``--bench`` CSV (``vitzoo-bench`` at 224 px: the model-only training and inference img/s). Writes ``--out``
(JSON: provenance and one row per run) and the CSV beside it (one line per run: top-1, top-5, end-to-end and
model-only training img/s, inference img/s). Rows already in ``--out`` stay unless a run of the same model, seed,
epochs and pipeline replaces them, so runs made on different machines or calls can be added one part at a time::

    python scripts/fashion_imagenet_results.py --runs runs/fim/e2 --eval runs/fim/results.csv \\
        --bench bench_224.csv --command "bash scripts/fashion_imagenet_run.sh --epochs 2 ..." \\
        --out benchmarks/results/fashion_imagenet/h200.json

Runs of another length or subset of the same data (the recipes' full 30 epochs on 1,000 images a class, say) go into
a section of the same file with ``--section NAME``: its own ``info`` and ``rows``, merged the same way.

A run's pipeline says where RandAugment ran (the loader workers, or the training device with
``augment_on_device``) and how the training step ran (eager, or replayed from CUDA graphs with ``cuda_graph``). The
model-only speeds of a CUDA-graph run come from ``--bench-graphed``, one or more ``vitzoo-bench --compare --phases
infer train --cuda-graph`` JSONs at the runs' batch (e.g. one per process of a comparison split in parts): their
``cuda-graph`` rows at 224 px, a later file's row replacing an earlier one's (``--bench`` is then needed only for
eager runs).

Runs that shared a GPU (the run script's ``--runs-per-gpu``; give the same number here) measured their end-to-end
speed on a share of it: their rows keep it, marked with ``runs_per_gpu``, and leave the end-to-end / model-only ratio
empty.

Where the run script sampled the GPU's utilisation (``<run>.util.csv`` beside the run folder, on machines with
nvidia-smi), a row also gets the median over the last epoch's steady part (:func:`gpu_utilisation`).

End-to-end img/s is measured two ways from the training log: over each whole epoch (its training images / its wall
time, from the first batch request to the last update; the loader's start-up is in the first epoch) and in steady
state (the median rate between consecutive loss-log records of one epoch, which leaves out each epoch's start).
``python -m vitzoo.report`` draws the top-1 vs throughput plot and the docs table from the written files.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vitzoo.bench.common import write_csv, write_json  # noqa: E402
from vitzoo.report.fashion_mnist import DEFAULT_PIPELINE, run_pipeline  # noqa: E402
from vitzoo.report.pareto import BENCH_KEYS  # noqa: E402
from vitzoo.train.loop import read_run_log, read_saved_config  # noqa: E402

CSV_COLUMNS = ("model", "family", "seed", "epochs", "pipeline", "runs_per_gpu", "top1", "top5", "end_to_end_img_per_s",
               "steady_end_to_end_img_per_s", "model_only_train_img_per_s", "end_to_end_over_model_only",
               "gpu_utilisation_percent", "infer_img_per_s", "max_train_loss", "status")


def steady_rate(train_events: list[dict[str, Any]], global_batch: int) -> float | None:
    """Median img/s between consecutive loss records of the same epoch (each epoch's first record is dropped, as
    it follows the epoch's start; so is a record that a resumed run logs again)."""
    rates = []
    for before, after in zip(train_events, train_events[1:], strict=False):
        if (before["epoch"] == after["epoch"] and after["time"] > before["time"]
                and after["num_updates"] > before["num_updates"]):
            images = (after["num_updates"] - before["num_updates"]) * global_batch
            rates.append(images / (after["time"] - before["time"]))
    return round(statistics.median(rates), 1) if rates else None


def gpu_utilisation(samples: Path, events: list[dict[str, Any]]) -> float | None:
    """Median GPU utilisation (%, nvidia-smi's share of time a kernel ran) over the run's steady state: the samples
    of ``samples`` (the run script's ``<run>.util.csv``: UTC timestamp, percent) between the first and the last loss
    record of the last epoch, counting only records after the run's last resume (a restarted process's start-up is
    not steady). None without samples in that window."""
    if not samples.is_file():
        return None
    resumed = max((e["time"] for e in events if e["event"] == "resume"), default=float("-inf"))
    train = [e for e in events if e["event"] == "train" and e["time"] > resumed]
    if not train:
        return None
    last_epoch = [e for e in train if e["epoch"] == train[-1]["epoch"]]
    start, end = last_epoch[0]["time"], last_epoch[-1]["time"]
    values = []
    for line in samples.read_text().splitlines():
        stamp, _, percent = line.partition(",")
        try:  # a sampler killed mid-line, or a GPU that reports [N/A], leaves lines that do not parse
            moment = datetime.datetime.strptime(stamp.strip(), "%Y/%m/%d %H:%M:%S.%f").replace(
                tzinfo=datetime.timezone.utc).timestamp()
            value = float(percent.strip().removesuffix("%"))
        except ValueError:
            continue
        if start <= moment <= end:
            values.append(value)
    return round(statistics.median(values), 1) if values else None


def run_row(folder: Path, eval_rows: dict[tuple[str, str], dict[str, str]], bench: dict[str, dict[str, str]],
            graphed_bench: dict[str, dict[str, str]], runs_per_gpu: int = 1) -> dict[str, Any]:
    """One run's row: per-epoch metrics and speeds from its log, the final evaluation, the model's benchmark (the
    CUDA-graph rates for a run that graphed its steps); ``runs_per_gpu`` > 1: the run shared its GPU, so its
    end-to-end speed is not compared with the model-only one."""
    config = read_saved_config(folder)
    events = read_run_log(folder)
    start = next(e for e in events if e["event"] == "start")
    global_batch = start["global_batch"]
    evals = [e for e in events if e["event"] == "eval"]
    train_events = [e for e in events if e["event"] == "train"]
    per_epoch, previous_updates = [], 0
    for record in evals:
        images = (record["num_updates"] - previous_updates) * global_batch
        previous_updates = record["num_updates"]
        per_epoch.append({"epoch": record["epoch"], "train_loss": round(record["train_loss"], 4),
                          "top1": round(record["eval_top1"], 2), "top5": round(record["eval_top5"], 2),
                          **({"ema_top1": round(record["ema_top1"], 2)} if "ema_top1" in record else {}),
                          "epoch_time_s": record["epoch_time"],
                          "end_to_end_img_per_s": round(images / record["epoch_time"], 1)})
    model = config["model"]
    final = eval_rows.get((folder.parent.name, folder.name))
    speed = (graphed_bench if config.get("cuda_graph") else bench).get(model, {})
    model_only = float(speed["train_samples_per_sec"]) if speed.get("train_samples_per_sec") else None
    end_to_end = per_epoch[-1]["end_to_end_img_per_s"] if per_epoch else None
    nonfinite = any(e["event"] == "nonfinite" for e in events)
    # a run lasts its epochs and then its cool-down epochs (timm's scheduler); each ends with an evaluation
    total_epochs = config["epochs"] + config.get("cooldown_epochs", 0)
    status = "non-finite loss" if nonfinite else ("ok" if final and len(per_epoch) == total_epochs else
                                                   "unfinished")
    return {
        "model": model, "family": folder.name.rsplit("-seed", 1)[0], "seed": config["seed"],
        "epochs": config["epochs"], "pipeline": run_pipeline(config), "global_batch": global_batch,
        "epochs_done": len(per_epoch),
        "per_epoch": per_epoch,
        "train_loss_log": [[e["num_updates"], round(e["loss"], 4)] for e in train_events],
        "max_train_loss": round(max((e["loss"] for e in train_events), default=float("nan")), 4),
        "end_to_end_img_per_s": end_to_end,
        "steady_end_to_end_img_per_s": steady_rate(train_events, global_batch),
        "model_only_train_img_per_s": model_only,
        "runs_per_gpu": runs_per_gpu,
        "end_to_end_over_model_only": (round(end_to_end / model_only, 3)
                                       if end_to_end and model_only and runs_per_gpu == 1 else None),
        # the whole GPU's, also when runs_per_gpu runs shared it
        "gpu_utilisation_percent": gpu_utilisation(folder.parent / f"{folder.name}.util.csv", events),
        "infer_img_per_s": float(speed["infer_samples_per_sec"]) if speed.get("infer_samples_per_sec") else None,
        "bench": {key: speed.get(key, "") for key in BENCH_KEYS},
        "final_eval": ({"top1": float(final["top1"]), "top5": float(final["top5"]),
                        "weights": "ema" if final["checkpoint"].endswith(":ema") else "model",  # eval.py's mark
                        "checkpoint": final["checkpoint"]} if final else None),
        "status": status,
    }


def _eval_rows(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    """eval.py rows by (runs folder name, run folder name), e.g. ('aod', 'linear-seed0'): the checkpoint column holds
    the run folder or a checkpoint inside it, and runs of several pipelines share run folder names."""
    rows = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            parts = Path(row["checkpoint"]).parts
            for index, part in enumerate(parts):
                if "-seed" in part:
                    rows[(parts[index - 1] if index else "", part)] = row  # later rows (re-evaluations) win
    return rows


def _bench_rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as handle:
        return {row["model"]: row for row in csv.DictReader(handle) if row.get("infer_img_size") in ("224", "")}


def _graphed_bench_rows(paths: list[Path], batch: int | None) -> dict[str, dict[str, str]]:
    """model -> the ``cuda-graph`` rows at 224 px of ``vitzoo-bench --compare`` JSONs (at ``batch``; a later file's
    row replaces an earlier one's) as a benchmark row: training and inference img/s, precision, device."""
    rows: dict[str, dict[str, str]] = {}
    for path in paths:
        data = json.loads(path.read_text())
        for row in data["rows"]:
            if (row["compile"] == "cuda-graph" and row["status"] == "ok" and row["img_size"] == 224
                    and (batch is None or row["batch"] == batch)):
                bench = rows.setdefault(row["model"], {"infer_img_size": "224", "compile": "cuda-graph",
                                                       "precision": data["info"].get("precision", ""),
                                                       "device": data["info"].get("device", "")})
                bench[f"{row['phase']}_samples_per_sec"] = str(row["img_per_s"])
    return rows


def _key(row: dict[str, Any]) -> tuple:
    return row["model"], row["seed"], row["epochs"], row["pipeline"]


def merge(existing: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``existing`` with every row of the same (model, seed, epochs, pipeline) as a new row replaced by it. Rows
    written before runs recorded their pipeline were the recipe's (:data:`DEFAULT_PIPELINE`)."""
    existing = [{**row, "pipeline": row.get("pipeline", DEFAULT_PIPELINE)} for row in existing]
    keys = {_key(row) for row in new}
    kept = [row for row in existing if _key(row) not in keys]
    return sorted(kept + new, key=lambda row: (row["family"], row["pipeline"], row["seed"]))


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, required=True, help="folder of <family>-seed<k> run folders")
    parser.add_argument("--eval", type=Path, required=True, help="eval.py results CSV of those runs")
    parser.add_argument("--bench", type=Path,
                        help="vitzoo-bench CSV of the same models at 224 px (the model-only speeds of eager runs)")
    parser.add_argument("--bench-graphed", type=Path, nargs="+", default=[],
                        help="vitzoo-bench --compare JSON(s) with cuda-graph rows at 224 px and the runs' batch (the "
                             "model-only speeds of runs with cuda_graph=true)")
    parser.add_argument("--runs-per-gpu", type=int, default=1,
                        help="runs that shared each GPU (the run script's --runs-per-gpu; default 1)")
    parser.add_argument("--out", type=Path, required=True, help="results JSON (rows merged); the CSV goes beside it")
    parser.add_argument("--command", action="append", default=[], help="a command that made these results")
    parser.add_argument("--git-revision", required=True, help="the code revision the runs used")
    parser.add_argument("--info", type=Path, help="JSON of provenance fields to record (device, versions, dataset)")
    parser.add_argument("--section", help="fold the runs into this section of --out (its own info and rows, e.g. runs "
                                          "of another length or subset) instead of its main rows; the CSV keeps "
                                          "the main rows")
    args = parser.parse_args(argv)
    for path in (args.runs, args.eval, args.bench, *args.bench_graphed):
        if path is not None and not path.exists():
            parser.error(f"{path} does not exist")
    if args.bench is None and not args.bench_graphed:
        parser.error("give --bench (eager runs) or --bench-graphed (runs with cuda_graph=true) or both")
    if args.runs_per_gpu < 1:
        parser.error(f"--runs-per-gpu takes a positive integer, got {args.runs_per_gpu}")
    folders = sorted(p for p in args.runs.iterdir() if p.is_dir() and (p / "log.jsonl").exists())
    if not folders:
        parser.error(f"no run folder with a log.jsonl under {args.runs}")
    eval_rows, bench = _eval_rows(args.eval), _bench_rows(args.bench) if args.bench else {}
    batch = read_saved_config(folders[0]).get("batch_size")
    graphed_bench = _graphed_bench_rows(args.bench_graphed, batch)
    new = [run_row(folder, eval_rows, bench, graphed_bench, args.runs_per_gpu) for folder in folders]
    for row in new:
        row["git_revision"] = args.git_revision
    data = json.loads(args.out.read_text()) if args.out.exists() else {"info": {}, "rows": []}
    target = data.setdefault(args.section, {"info": {}, "rows": []}) if args.section else data
    info = target["info"]
    if args.info:
        info.update(json.loads(args.info.read_text()))
    info.setdefault("commands", [])
    info["commands"] += [c for c in args.command if c not in info["commands"]]
    info["assembled"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    target["rows"] = merge(target.get("rows", []), new)
    write_json(args.out, data)
    flat = [{**row, "top1": row["final_eval"]["top1"] if row["final_eval"] else "",
             "top5": row["final_eval"]["top5"] if row["final_eval"] else ""} for row in data["rows"]]
    write_csv(args.out.with_suffix(".csv"), flat, CSV_COLUMNS)
    for row in new:
        print(f"{row['model']:<36} seed {row['seed']} {row['pipeline']} {row['status']:<10} top-1 "
              f"{row['final_eval']['top1'] if row['final_eval'] else '-'}  end-to-end {row['end_to_end_img_per_s']} "
              f"(steady {row['steady_end_to_end_img_per_s']}) / model-only {row['model_only_train_img_per_s']}")


if __name__ == "__main__":
    main()
