"""Train and evaluate a small DeiT-shaped model of every token-mixer family on Fashion-MNIST; write one CSV.

Each family uses ``configs/fashion_mnist.yaml`` (width 64, depth 4, 2 heads). To fit about 10 minutes on a 2-core
CPU the defaults train each model for ``--epochs`` (4) epochs of ``--train-samples`` (12800) randomly drawn training
images (a new draw each epoch: 51200 samples, 800 updates at batch 64, under one pass over the 60000) with patch 7
(16 patch tokens + cls) and no augmentation instead of the recipe's patch 4 with crop/flip, and evaluate on all
``--val-samples`` (10000) test images. Every model gets the same number of updates whatever the machine's load, so
its accuracy depends only on the seed; ``--time-budget`` (off by default) can cap each model's training at 70% of
its share of the time left, at the price of load-dependent results. The CSV records the updates each model got,
whether a cap cut it short, the training and evaluation seconds, and a status: "ok", or the error of a family that
failed (the others still run, and the script exits with status 1). Each family's run folder under ``--output`` is
replaced, like the CSV; with ``--resume`` a folder whose run has the same settings and was cut off continues from its
newest checkpoint instead (its ``train_seconds`` add the earlier epochs' times from the run's log). Example::

    python scripts/fashion_mnist_zoo.py                                   # CPU budget run
    python scripts/fashion_mnist_zoo.py --train-samples 60000 --epochs 10 \\
        patch_size=4 crop_pad=2 hflip=0.5 lr=2e-3 batch_size=128           # the full recipe
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402

from vitzoo import registry  # noqa: E402
from vitzoo.bench.common import write_csv  # noqa: E402
from vitzoo.train.config import ConfigError, TrainConfig, load_config  # noqa: E402
from vitzoo.train.evaluate import RESULT_COLUMNS, evaluate_model  # noqa: E402
from vitzoo.train.loop import read_run_log, read_saved_config, train  # noqa: E402

DEIT_FAMILIES = registry.DEIT_FAMILIES
# Every DeiT family shares one shape (the config's, on its tiny model); QT-ViT-1 keeps its own EfficientViT
# architecture, which is fully convolutional and takes no img_size or patch_size.
MODELS = ({family: registry.FAMILIES[family].model_name("tiny") for family in DEIT_FAMILIES}
          | {"qtvit": registry.FAMILIES["qtvit"].model_name("1")})
OWN_ARCHITECTURE = {"qtvit": ["model_kwargs={}", "img_size=null", "patch_size=null"]}
FAMILIES = tuple(MODELS)
EXTRA_COLUMNS = ("family", "patch_size", "updates", "samples_seen", "stopped_by_time_limit", "train_samples_per_epoch",
                 "epochs", "eval_samples", "train_seconds", "eval_seconds", "status")
COLUMNS = (*RESULT_COLUMNS, *EXTRA_COLUMNS)


def same_run(output: Path, config: TrainConfig) -> bool:
    """Whether ``output`` holds a checkpointed run whose saved settings are all those of ``config`` (not only the
    ones a resume must share: a run of another learning rate or length is not continued, it is replaced)."""
    if not (output / "checkpoints").is_dir():
        return False
    try:
        saved = read_saved_config(output)
    except ConfigError:
        return False
    # through YAML, as the run saved it (tuples become lists); a continued run saved resume: auto
    wanted = yaml.safe_load(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return saved | {"resume": None} == wanted | {"resume": None}


def seconds_before_resume(output: Path) -> float:
    """Training seconds of the epochs a continued run finished before its latest resume: the ``epoch_time`` of their
    ``eval`` records in ``output/log.jsonl`` (the last record of each epoch); 0 for a run never resumed or without
    a log."""
    records = read_run_log(output)
    resumes = [record["epoch"] for record in records if record.get("event") == "resume"]
    if not resumes:
        return 0.0
    epoch_times = {record["epoch"]: record["epoch_time"] for record in records
                   if record.get("event") == "eval" and record["epoch"] < resumes[-1]}
    return sum(epoch_times.values())


def parse_args(argv: list[str] | None = None, check: bool = True) -> argparse.Namespace:
    """The zoo's command line. With ``check``, a key=value override that is not a valid setting of every family's
    config stops here with one line (before any family trains)."""
    parser = argparse.ArgumentParser(prog="fashion_mnist_zoo.py", description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=list(DEIT_FAMILIES), choices=FAMILIES,
                        help="model families (default: the DeiT-shaped ones; 'qtvit' adds QT-ViT-1)")
    parser.add_argument("--train-samples", type=int, default=12800, help="training images drawn per epoch")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--val-samples", type=int, default=10000, help="first N test images (10000 = all)")
    parser.add_argument("--time-budget", type=float, default=0.0,
                        help="seconds for the whole zoo; each model's training is capped at 70%% of its share of "
                             "what is left, so results then depend on the machine's load (default 0: no cap, every "
                             "model trains all its updates)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 by default because with the 2 cores shared, 2 OpenMP threads that "
                             "wait on a descheduled partner made steps over 10x slower than 1 thread")
    parser.add_argument("--output", default=str(ROOT / "runs" / "fashion_mnist_zoo"), help="run folders")
    parser.add_argument("--results", default=str(ROOT / "results" / "fashion_mnist.csv"))
    parser.add_argument("--resume", action="store_true",
                        help="continue each family's cut-off run from its newest checkpoint when its folder holds a "
                             "run with the same settings (any other folder is replaced by a fresh run)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="extra overrides of the shared config")
    args = parser.parse_intermixed_args(argv)
    for family in args.families if check else ():
        try:
            family_config(family, args)
        except ConfigError as error:
            parser.error(str(error))
    return args


def family_config(family: str, args: argparse.Namespace, time_limit: float | None = None) -> TrainConfig:
    """The training config of ``family``'s run: the zoo's settings, then the command line's overrides."""
    # Per-epoch monitoring on 500 test images; the reported accuracy is the final --val-samples evaluation.
    # The CPU budget buys about 800 updates per model, so the budget run trades the recipe's patch 4 and
    # augmentation (which pay off over full epochs) for patch 7 (17 tokens: 3x faster steps) and no
    # augmentation, with a higher lr and a short warm-up (docs/training.md: what that did for softmax).
    overrides = [f"train_subset={args.train_samples}", f"epochs={args.epochs}", "val_subset=500",
                 "batch_size=64", "patch_size=7", "crop_pad=0", "hflip=0", "lr=3e-3", "warmup_epochs=0.1",
                 "workers=0", "progress=false", *args.overrides, *OWN_ARCHITECTURE.get(family, []),
                 *([f"time_limit={time_limit:.1f}"] if time_limit else [])]
    return load_config(ROOT / "configs" / "fashion_mnist.yaml", overrides, model=MODELS[family],
                       output=str(Path(args.output) / family))


def main(argv: list[str] | None = None) -> list[str]:
    """Run the zoo and write ``--results`` (overwritten); return the families that failed.

    A family whose training or evaluation raises gets a row with ``status`` "error: ..." and the zoo goes on."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)

    results = Path(args.results)
    start = time.time()
    failed: list[str] = []
    rows: list[dict] = []
    for index, family in enumerate(args.families):
        output = Path(args.output) / family
        share = (args.time_budget - (time.time() - start)) / (len(args.families) - index)
        config = family_config(family, args, max(share * 0.7, 5.0) if args.time_budget else None)
        # The family's folder holds only this script's previous run of it: continued when asked and it is the same
        # run, else replaced by a fresh one.
        if args.resume and same_run(output, config):
            config.resume = "auto"
        else:
            config.resume = None
            shutil.rmtree(output, ignore_errors=True)
        began = time.time()
        try:
            metrics = train(config)
            trained = time.time()
            earlier = seconds_before_resume(output) if config.resume else 0.0
            row = evaluate_model(checkpoint=str(output), dataset="fashion_mnist", data_dir=config.data_dir,
                                 val_subset=args.val_samples, batch_size=500, workers=config.workers,
                                 precision=config.precision)
        except Exception as error:  # noqa: BLE001 - one family's failure must not cost the others' runs
            status = f"error: {type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"
            rows.append({"model": config.model, "family": family, "status": status})
            write_csv(results, rows, COLUMNS)  # rewritten after each family: a cut-off run keeps what finished
            failed.append(family)
            print(f"{family:12s} FAILED ({status})", flush=True)
            continue
        seen = metrics["num_updates"] * config.batch_size * config.grad_accum
        row.update(family=family, patch_size=config.patch_size, updates=metrics["num_updates"], samples_seen=seen,
                   stopped_by_time_limit=metrics["stopped_by_time_limit"],
                   train_samples_per_epoch=args.train_samples, epochs=args.epochs,
                   eval_samples=row["count"], train_seconds=round(trained - began + earlier, 1),
                   eval_seconds=round(time.time() - trained, 1), status="ok")
        rows.append(row)
        write_csv(results, rows, COLUMNS)
        print(f"{family:12s} top1 {row['top1']:6.2f}  top5 {row['top5']:6.2f}  params {row['param_count']}M  "
              f"GMACs {row['gmacs']}  updates {row['updates']}  train {row['train_seconds']}s  "
              f"eval {row['eval_seconds']}s", flush=True)
    print(f"total {time.time() - start:.0f}s for {len(args.families)} families -> {results}"
          + (f"; FAILED: {' '.join(failed)}" if failed else ""))
    return failed


if __name__ == "__main__":
    sys.exit(1 if main() else 0)
