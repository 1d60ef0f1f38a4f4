"""Evaluation: exact top-1/top-5 and loss over a val loader (:func:`evaluate`, used every epoch of a run), and the
evaluation of a saved checkpoint or model into a row of timm's results CSV (:func:`evaluate_model`, ``vitzoo-eval``)."""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitzoo.train.checkpoint import CheckpointError, list_checkpoints, read_checkpoint_file, write_atomic
from vitzoo.train.config import (
    DATASETS,
    PRECISIONS,
    ConfigError,
    TrainConfig,
    check_choice,
    check_model_kwargs,
    check_model_name,
    check_values,
    first_line,
)
from vitzoo.train.data import (
    UNREADABLE_TARGET,
    DataError,
    EpochShuffleSampler,
    EvalTransform,
    build_dataset,
    check_dataset_path,
    loader_workers,
    report_unreadable,
    split_classes,
)
from vitzoo.train.factories import build_transforms, create_model_from_config

if TYPE_CHECKING:
    from accelerate import Accelerator

_logger = logging.getLogger(__name__)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, accelerator: Accelerator, use_autocast: bool = False,
             progress: bool = False, on_device: Callable[[torch.Tensor], torch.Tensor] | None = None
             ) -> dict[str, float]:
    """Exact top-1/top-5 and mean cross-entropy over the whole loader, gathered across processes.

    Samples whose target is :data:`~vitzoo.train.data.UNREADABLE_TARGET` (stand-ins for unreadable files) are not
    scored.

    Args:
        model: the model (wrapped by ``prepare``, or a bare module such as the EMA copy).
        loader: a prepared eval loader (``gather_for_metrics`` drops the samples padded for even batches).
        accelerator: the run's accelerator.
        use_autocast: run under ``accelerator.autocast()`` (needed for modules not wrapped by ``prepare``).
        progress: show a tqdm bar on the main process (only when stderr is a terminal).
        on_device: what turns the loader's batches into the model's input where they are (the normalisation of
            :class:`~vitzoo.train.data.EvalTransform`'s uint8 crops; :func:`eval_batch_stage`).
    """
    import sys

    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    correct1 = correct5 = loss_sum = 0.0
    count = 0
    bar = tqdm(loader, desc="eval", leave=False,
               disable=not (progress and accelerator.is_local_main_process and sys.stderr.isatty()))
    for images, targets in bar:
        if on_device is not None:
            images = on_device(images)
        if use_autocast:
            with accelerator.autocast():
                logits = model(images)
        else:
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[-1])
        scored = targets != UNREADABLE_TARGET
        safe_targets = torch.where(scored, targets, torch.zeros_like(targets))
        topk = logits.topk(k, dim=-1).indices
        hits = topk == safe_targets[:, None]
        stats = torch.stack([hits[:, 0].float(), hits.any(-1).float(),
                             F.cross_entropy(logits, safe_targets, reduction="none"), scored.float()], dim=1)
        stats = accelerator.gather_for_metrics(stats)
        stats = stats[stats[:, 3] > 0]
        correct1 += stats[:, 0].sum().item()
        correct5 += stats[:, 1].sum().item()
        loss_sum += stats[:, 2].double().sum().item()
        count += stats.shape[0]
    bar.close()
    model.train(was_training)
    scored_count = max(count, 1)
    return {"top1": 100.0 * correct1 / scored_count, "top5": 100.0 * correct5 / scored_count,
            "loss": loss_sum / scored_count, "count": count}


def eval_batch_stage(eval_transform: Callable) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The device half of an eval transform (an image folder's :class:`~vitzoo.train.data.EvalTransform`), or None
    where the loader's samples are the model's input already (Fashion-MNIST's)."""
    return eval_transform.on_device if isinstance(eval_transform, EvalTransform) else None


# timm's validate.py / results-imagenet.csv columns in their order, then ours.
RESULT_COLUMNS = ("model", "top1", "top1_err", "top5", "top5_err", "param_count", "img_size", "crop_pct",
                  "interpolation", "dataset", "checkpoint", "gmacs", "kernel_backend")


def _gmacs(model: nn.Module, input_size: tuple[int, int, int]) -> float | None:
    """GMACs at batch 1 via :func:`vitzoo.flops.count_gmacs` on an fp32 CPU copy; ``None`` if tracing fails."""
    import copy

    from vitzoo.flops import count_gmacs

    try:
        return round(count_gmacs(copy.deepcopy(model).float().cpu(), input_size), 4)
    except Exception as error:  # noqa: BLE001 - the count is an optional column; tracing can fail on exotic ops
        _logger.warning("fvcore could not count MACs of %s: %s", type(model).__name__, error)
        return None


def evaluate_model(model_name: str | None = None, checkpoint: str | None = None, dataset: str | None = None,
                   data_dir: str | None = None, use_ema: bool = False, batch_size: int = 256, workers: int = 4,
                   precision: str = "fp32", val_subset: int | None = None, model_kwargs: dict | None = None,
                   num_classes: int | None = None, in_chans: int | None = None, img_size: int | None = None,
                   patch_size: int | None = None, count_macs: bool = True) -> dict[str, Any]:
    """Evaluate a training checkpoint folder, or a model name (optionally with weights), on a dataset's val split.

    Args:
        model_name: a timm/vitzoo model name; taken from the checkpoint's ``meta.json`` when omitted.
        checkpoint: a folder written by :func:`vitzoo.train.loop.train` (``step-*`` or the run folder: its latest
            checkpoint), or a weights file: for a vitzoo model it goes through the model's checkpoint filter (so the
            authors' InLine and QT-ViT checkpoints load directly), for other timm models it is timm's
            ``checkpoint_path``.
        dataset: ``'folder'``, ``'packed'`` or ``'fashion_mnist'``; default: the checkpoint's (``meta.json``), else
            ``'folder'``.
        data_dir: the dataset folder (the val split is ``<data_dir>/val``); default: the checkpoint's when the
            dataset is the checkpoint's.
        use_ema: load ``ema.safetensors`` of a checkpoint folder.
        batch_size: eval batch size per process.
        workers: loader worker processes.
        precision: ``'bf16'``, ``'fp16'`` or ``'fp32'``.
        val_subset: evaluate only the first samples (None: the whole split).
        model_kwargs, num_classes, in_chans, img_size, patch_size: model construction overrides.
        count_macs: add fvcore GMACs.

    Returns:
        A row with :data:`RESULT_COLUMNS` keys.

    Raises:
        ConfigError: bad values, a missing or damaged checkpoint, a dataset whose classes differ from the
            checkpoint's class map, or a ``num_classes`` that differs from the checkpoint's.
    """
    from accelerate import Accelerator
    from safetensors.torch import load_file, load_model
    from torch.utils.data import DataLoader

    from vitzoo.convert import ConvertError
    from vitzoo.models import list_models as vitzoo_models
    from vitzoo.models._helpers import CheckpointLayoutError
    from vitzoo.ops import kernel_backend

    settings: dict[str, Any] = {"dataset": dataset, "data_dir": data_dir, "model_kwargs": model_kwargs or {},
                                "drop_path": 0.0, "in_chans": in_chans, "num_classes": num_classes}
    weights_file = None
    classes = None  # the checkpoint's class map: val class folders are indexed by it
    if checkpoint is not None:
        path = Path(checkpoint)
        if path.is_dir() and not (path / "meta.json").is_file():
            found = list_checkpoints(path)
            if not found:
                raise ConfigError(f"no checkpoint (step-*/meta.json) under {path}; pass a step-* folder or a file")
            path = found[-1]
        if path.is_dir():
            meta = read_checkpoint_file(path / "meta.json", lambda file: json.loads(file.read_text()))
            saved = meta.get("config", {}) if isinstance(meta, dict) else {}
            if not {"model", "model_kwargs", "img_size", "patch_size"} <= set(saved) or "num_classes" not in meta:
                raise CheckpointError(f"{path / 'meta.json'} lacks the run's config (not written by vitzoo-train)")
            _check_same_model(model_name, saved["model"], path)
            for key in ("model", "model_kwargs", "img_size", "patch_size"):
                settings[key] = saved[key]
            if num_classes is not None and num_classes != meta["num_classes"]:
                raise ConfigError(f"--num-classes {num_classes} differs from the checkpoint's {meta['num_classes']} "
                                  f"classes ({path}); leave it out")
            if settings["dataset"] is None or settings["dataset"] == saved.get("dataset"):
                settings["dataset"] = saved.get("dataset", "folder")
                settings["data_dir"] = data_dir or saved.get("data_dir")
                classes = meta.get("classes")
            settings["in_chans"] = in_chans or meta["in_chans"]
            settings["num_classes"] = meta["num_classes"]
            weights_file = path / ("ema.safetensors" if use_ema else "model.safetensors")
            if not weights_file.is_file():
                raise ConfigError(f"{weights_file} does not exist" + ("; the run had no EMA" if use_ema else ""))
        elif not path.is_file():
            raise ConfigError(f"checkpoint {checkpoint} does not exist")
        elif model_name is not None and (path.parent / "meta.json").is_file():
            # a weights file of a vitzoo-train checkpoint: its meta.json names the model it belongs to
            meta = read_checkpoint_file(path.parent / "meta.json", lambda file: json.loads(file.read_text()))
            _check_same_model(model_name, meta.get("config", {}).get("model") if isinstance(meta, dict) else None, path)
        checkpoint = str(path)
    for key, value in (("model", model_name), ("img_size", img_size), ("patch_size", patch_size)):
        if value is not None:
            settings[key] = value
    if "model" not in settings:
        raise ConfigError("give a model name (--model) or a checkpoint folder written by vitzoo-train")
    if model_kwargs:
        settings["model_kwargs"] = {**settings["model_kwargs"], **model_kwargs}
    settings["dataset"] = settings["dataset"] or "folder"
    config = TrainConfig(**settings, batch_size=batch_size, workers=workers, val_subset=val_subset, precision=precision)
    dataset, data_dir = config.dataset, config.data_dir
    check_values(config, ("img_size", "patch_size", "in_chans", "num_classes", "batch_size", "workers", "val_subset"))
    check_choice("dataset", dataset, DATASETS)
    check_choice("precision", precision, PRECISIONS)
    check_model_kwargs(config)
    check_model_name(config.model)
    try:
        folder = check_dataset_path(dataset, data_dir, ("val",))
        classes = classes or split_classes(dataset, folder, "val")
    except DataError as error:
        raise ConfigError(str(error)) from None
    in_chans = config.in_chans or (1 if dataset == "fashion_mnist" else 3)
    num_classes = config.num_classes or len(classes)
    if num_classes < len(classes):
        raise ConfigError(f"num_classes={num_classes} is smaller than the dataset's {len(classes)} classes")

    accelerator = Accelerator(mixed_precision=PRECISIONS[precision], cpu=not torch.cuda.is_available())
    weights_path = checkpoint if checkpoint is not None and weights_file is None else None
    # A weights file for a zoo model goes through its checkpoint filter, so the authors' checkpoints load directly.
    zoo_file = weights_path is not None and config.model in vitzoo_models()
    try:
        model = create_model_from_config(config, num_classes, in_chans,
                                         checkpoint_path=None if zoo_file else weights_path,
                                         pretrained_file=weights_path if zoo_file else None)
    except (CheckpointLayoutError, ConvertError) as error:
        raise ConfigError(str(error)) from None
    if weights_file is not None:
        read_checkpoint_file(weights_file, load_file)
        try:
            load_model(model, str(weights_file))
        except RuntimeError as error:
            raise ConfigError(f"weights {weights_file} do not fit {config.model}: {first_line(error)}") from None
    _, _, eval_tf, data_config = build_transforms(config, model)
    try:
        val_set = build_dataset(dataset, data_dir, "val", eval_tf, seed=0, limit=val_subset, classes=classes,
                                score_substitutes=False)
        val_set.check_readable()
    except DataError as error:
        raise ConfigError(str(error)) from None
    sampler = EpochShuffleSampler(len(val_set), 0, shuffle=False)
    loader = DataLoader(val_set, batch_size=batch_size, sampler=sampler, **loader_workers(workers))
    model, loader = accelerator.prepare(model, loader)
    metrics = evaluate(model, loader, accelerator, progress=True, on_device=eval_batch_stage(eval_tf))
    skipped = report_unreadable(val_set, accelerator)
    bare = accelerator.unwrap_model(model)
    input_size = tuple(data_config["input_size"])
    row = {
        "model": config.model,
        "top1": round(metrics["top1"], 4), "top1_err": round(100 - metrics["top1"], 4),
        "top5": round(metrics["top5"], 4), "top5_err": round(100 - metrics["top5"], 4),
        "param_count": round(sum(p.numel() for p in bare.parameters()) / 1e6, 2),
        "img_size": input_size[-1], "crop_pct": data_config.get("crop_pct"),
        "interpolation": data_config.get("interpolation"),
        "dataset": dataset if dataset == "fashion_mnist" else str(data_dir),
        "checkpoint": (str(checkpoint) + (":ema" if use_ema else "")) if checkpoint else "",
        "gmacs": _gmacs(bare, input_size) if count_macs else None,
        "kernel_backend": kernel_backend(accelerator.device),
    }
    row["count"] = metrics["count"]
    row["skipped_files"] = skipped
    return row


def _check_same_model(model_name: str | None, saved_model: str | None, checkpoint: Path) -> None:
    """Raise :class:`ConfigError` when ``--model`` names another model than the checkpoint's meta.json does."""
    if model_name is not None and saved_model is not None and model_name != saved_model:
        raise ConfigError(f"--model {model_name} differs from the checkpoint's {saved_model} ({checkpoint}); "
                          "leave it out")


def check_appendable_results_file(path: str | os.PathLike) -> None:
    """Raise :class:`ConfigError` unless a row can be appended to ``path``: it must be a new file or a CSV whose
    header is :data:`RESULT_COLUMNS` (checked before an evaluation runs, so its metrics are never lost)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"results file {path} is a folder; pass a .csv file path (--results-file)")
    if path.is_file() and path.stat().st_size:
        try:
            with path.open(newline="", encoding="utf-8") as handle:
                header = handle.readline().strip()
        except UnicodeDecodeError:
            raise ConfigError(f"results file {path} is not a CSV text file; pass a new --results-file") from None
        if header != ",".join(RESULT_COLUMNS):
            raise ConfigError(f"results file {path} has another header ({header[:80]}); pass a new --results-file")


def append_result(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append ``row`` to the CSV at ``path`` in :data:`RESULT_COLUMNS` order, writing the header for a new file.

    The file is rewritten through :func:`write_atomic`, so a reader never sees a half-written row.
    """
    import csv
    import io

    check_appendable_results_file(path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.is_file() else ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(RESULT_COLUMNS), extrasaction="ignore")
    if not text:
        writer.writeheader()
    writer.writerow(row)
    write_atomic(path, text + buffer.getvalue())
