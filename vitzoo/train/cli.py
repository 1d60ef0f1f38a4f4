"""Command-line entry points ``vitzoo-train``, ``vitzoo-eval`` (also ``train.py`` / ``eval.py`` at the repo root) and
``vitzoo-timm`` (timm's own scripts with the zoo's models registered).

Train and eval run unchanged under ``python``, ``torchrun`` and ``accelerate launch``; accelerate reads the process
world from the environment. Bad flags, config values, data folders and checkpoint files exit with status 2 and one
line on stderr that says what to fix.
"""
from __future__ import annotations

import argparse
import json
import logging
import runpy
import sys
from pathlib import Path
from typing import Any, NoReturn

import yaml

from vitzoo.train.config import DATASETS, ConfigError, TrainConfig, load_config
from vitzoo.train.evaluate import append_result, check_appendable_results_file, evaluate_model
from vitzoo.train.loop import NonFiniteLossError, train


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _fail(message: str, status: int = 2) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(status)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (argparse prints the usage block first)."""

    def error(self, message: str) -> NoReturn:
        _fail(f"{message} (see {self.prog} --help)")


def _yaml_mapping(text: str) -> dict[str, Any]:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a YAML mapping; write it as '{{depth: 2, embed_dim: 64}}'")
    return value


def train_main(argv: list[str] | None = None) -> None:
    """Parse arguments, train, print the final metrics as one JSON line prefixed ``--result``."""
    parser = _Parser(
        description="Train a timm/vitzoo model with accelerate. Settings come from --config, then the flags below, "
                    "then key=value overrides (any TrainConfig key).",
        epilog=f"config keys: {', '.join(TrainConfig.keys())}")
    parser.add_argument("--config", help="YAML file of config keys (configs/imagenet/<family>.yaml, ...)")
    parser.add_argument("--model", help="timm model name, e.g. inline_deit_tiny_patch16_224")
    parser.add_argument("--dataset", choices=DATASETS)
    parser.add_argument("--data-dir", help="folder with train/ and val/ class sub-folders (or Fashion-MNIST files)")
    parser.add_argument("--output", help="run folder (log.jsonl, config.yaml, summary.csv, checkpoints/); default: a "
                                         "fresh output/train/<date-time>-<model>-<dataset>")
    parser.add_argument("--precision", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--resume", help="'auto' (newest intact checkpoint in --output, if any) or a step-* folder")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (values parsed as YAML)")
    # Intermixed: key=value overrides may come before or after the flags.
    args = parser.parse_intermixed_args(argv)
    _setup_logging()
    try:
        config = load_config(args.config, args.overrides, model=args.model, dataset=args.dataset,
                             data_dir=args.data_dir, output=args.output, precision=args.precision, resume=args.resume)
        metrics = train(config)
    except ConfigError as error:
        _fail(str(error))
    except NonFiniteLossError as error:
        _fail(str(error), status=3)
    from accelerate import PartialState

    if PartialState().is_main_process:
        print("--result")
        print(json.dumps(metrics, default=str))


def eval_main(argv: list[str] | None = None) -> None:
    """Evaluate a checkpoint or a model on a val split and append a row to the results CSV."""
    parser = _Parser(description="Evaluate a vitzoo-train checkpoint or a timm model name; write a "
                                                 "row in timm's results CSV column order plus vitzoo's columns.")
    parser.add_argument("--checkpoint", help="checkpoint folder (step-*), run folder (latest step-*) or weights file")
    parser.add_argument("--model", help="model name (read from the checkpoint folder when omitted)")
    parser.add_argument("--use-ema", action="store_true", help="evaluate the EMA weights of a checkpoint folder")
    parser.add_argument("--dataset", choices=DATASETS,
                        help="default: the checkpoint's (meta.json), else folder")
    parser.add_argument("--data-dir", help="folder with a val/ split (default for Fashion-MNIST: the Debian path)")
    parser.add_argument("--results-file", default="results/eval.csv", help="CSV to append to")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--precision", default="fp32", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--val-subset", type=int, help="evaluate only the first N samples")
    parser.add_argument("--img-size", type=int)
    parser.add_argument("--patch-size", type=int)
    parser.add_argument("--num-classes", type=int)
    parser.add_argument("--in-chans", type=int)
    parser.add_argument("--model-kwargs", type=_yaml_mapping, help="YAML mapping, e.g. '{embed_dim: 64, depth: 4}'")
    parser.add_argument("--no-macs", action="store_true", help="skip the fvcore MAC count")
    args = parser.parse_args(argv)
    _setup_logging()
    try:
        check_appendable_results_file(args.results_file)
        row = evaluate_model(args.model, args.checkpoint, args.dataset, args.data_dir, args.use_ema, args.batch_size,
                             args.workers, args.precision, args.val_subset, args.model_kwargs, args.num_classes,
                             args.in_chans, args.img_size, args.patch_size, count_macs=not args.no_macs)
    except ConfigError as error:
        _fail(str(error))
    from accelerate import PartialState

    if PartialState().is_main_process:
        append_result(args.results_file, row)
        print("--result")
        print(json.dumps(row, default=str))


def timm_main(argv: list[str] | None = None) -> None:
    """``vitzoo-timm SCRIPT ARGS...``: run one of timm's scripts (``train.py``, ``validate.py``, ``benchmark.py``,
    ...) as ``__main__`` with ``ARGS``, after ``import vitzoo`` has registered the zoo's models with timm."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: vitzoo-timm path/to/timm/script.py [ARGS...]  (runs the script with vitzoo's models registered)")
        raise SystemExit(0 if argv else 2)
    script = Path(argv[0])
    if not script.is_file():
        _fail(f"script {script} does not exist; pass the path of a timm script such as pytorch-image-models/train.py")
    import vitzoo  # noqa: F401 - importing registers every vitzoo model with timm

    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [str(script), *argv[1:]]
    sys.path.insert(0, str(script.resolve().parent))  # as `python script.py` would: the script's folder first
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
