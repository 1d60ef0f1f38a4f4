"""Training and evaluation with HF accelerate and timm's data, optimizer, scheduler, loss and EMA pieces.

One :class:`TrainConfig` (flat keys, loaded from YAML and ``key=value`` overrides) drives :func:`train`. The loop
follows ``docs/training.md``: accelerate owns devices, mixed precision, gradient accumulation and data sharding; the
timm scheduler stays outside ``prepare`` and is stepped by hand per optimizer update; the EMA is evaluated under
``accelerator.autocast()``; checkpoints are written to a temporary folder and moved into place with ``os.replace``.

Trust: every config value, data folder, the output folder and the resume checkpoint are checked before a run writes
anything, each failure raising :class:`ConfigError` with one line that says what to fix. Checkpoints are read with
``torch.load(weights_only=True)`` and safetensors only, and compared with the run (``meta.json``) before anything is
restored; a new run never writes into a folder that holds another run.

Determinism: shuffling depends on (seed, epoch), augmentation on (seed, epoch, sample index) and the step's own random
draws (mixup, drop path) on (seed, rank, epoch, batch index), so a run resumed from a checkpoint replays exactly the
draws of an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

from vitzoo.train.data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    UNREADABLE_TARGET,
    AugmentConfig,
    DataError,
    EpochShuffleSampler,
    GreyTransform,
    build_dataset,
    check_dataset_path,
    folder_classes,
    folder_transforms,
    report_unreadable,
    sample_seed,
    seed_everything,
    worker_init,
)

_logger = logging.getLogger(__name__)

PRECISIONS = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}
CHECKPOINT_PREFIX = "step-"


class ConfigError(ValueError):
    """A bad configuration value or key; the message is one line that says what to fix."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the last checkpoint written before it is kept."""


@dataclass
class TrainConfig:
    """Every setting of a training run. YAML files and ``key=value`` overrides may set exactly these keys.

    Learning rate: ``lr`` if set, else ``lr_base * global_batch / lr_base_size`` with global_batch = batch_size x
    processes x grad_accum (linear scaling as in DeiT and timm's train.py). ``warmup_lr`` and ``min_lr`` are absolute.
    The schedule is timm's, stepped per optimizer update; the run lasts ``epochs + cooldown_epochs`` epochs.
    ``train_subset`` draws that many training samples per epoch (a new random subset each epoch); ``val_subset``
    evaluates the first samples of the val split only. ``max_steps`` stops after that many optimizer updates and
    ``time_limit`` after that many seconds of training (both then evaluate and checkpoint as at an epoch end).
    """

    # model
    model: str = "deit_tiny_patch16_224"
    model_kwargs: dict = field(default_factory=dict)
    img_size: int | None = None
    patch_size: int | None = None
    in_chans: int | None = None
    num_classes: int | None = None
    drop_path: float = 0.1
    # data
    dataset: str = "folder"
    data_dir: str | None = None
    train_subset: int | None = None
    val_subset: int | None = None
    batch_size: int = 128
    eval_batch_size: int | None = None
    workers: int = 4
    crop_pct: float | None = None
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    re_prob: float = 0.25
    re_mode: str = "pixel"
    color_jitter: float = 0.4
    hflip: float = 0.5
    crop_pad: int = 2  # Fashion-MNIST: pad-and-random-crop margin in pixels (0 = no crop augmentation)
    scale: list = field(default_factory=lambda: [0.08, 1.0])
    train_interpolation: str = "random"
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    smoothing: float = 0.1
    bce_loss: bool = False
    # optimisation
    epochs: int = 300
    max_steps: int | None = None
    time_limit: float | None = None
    grad_accum: int = 1
    opt: str = "adamw"
    lr: float | None = None
    lr_base: float = 5e-4
    lr_base_size: int = 512
    weight_decay: float = 0.05
    opt_eps: float = 1e-8
    opt_betas: list = field(default_factory=lambda: [0.9, 0.999])
    clip_grad: float | None = None
    sched: str = "cosine"
    warmup_epochs: float = 5
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    cooldown_epochs: int = 0
    model_ema: bool = False
    model_ema_decay: float = 0.9998
    model_ema_warmup: bool = False
    precision: str = "bf16"
    compile: str | None = None  # torch.compile mode of the training forward; None: eager
    seed: int = 0
    # bookkeeping
    output: str | None = None  # None: a fresh output/train/<date-time>-<model>-<dataset>
    log_interval: int = 50
    checkpoint_interval: int = 0
    checkpoint_keep: int = 2
    resume: str | None = None
    progress: bool = True

    @classmethod
    def keys(cls) -> list[str]:
        """Return the valid configuration keys."""
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as a plain dict (YAML/JSON serialisable)."""
        return dataclasses.asdict(self)


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = (),
                **settings: Any) -> TrainConfig:
    """Build a :class:`TrainConfig` from a YAML file, then ``settings``, then ``key=value`` overrides (YAML values).

    Raises:
        ConfigError: an unknown key, a malformed override or a bad value, with a one-line message naming the key and
            the valid ones.
    """
    valid = TrainConfig.keys()
    values: dict[str, Any] = {}
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"config file {path} does not exist")
        loaded = _parse_yaml(Path(path).read_text(), f"config file {path}") or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of key: value")
        values.update(_checked(loaded, valid, f"in {path}"))
    values.update(_checked({k: v for k, v in settings.items() if v is not None}, valid, "given"))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value; valid keys: {', '.join(valid)}")
        values.update(_checked({key.strip(): _parse_yaml(text, f"override {item!r}")}, valid, "in overrides"))
    config = TrainConfig(**values)
    validate_config(config)
    return config


def _parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        position = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ConfigError(f"{where} is not valid YAML{position}: {problem}") from None


def _checked(values: dict, valid: list[str], where: str) -> dict:
    types = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    checked = {}
    for key, value in values.items():
        if key not in valid:
            raise ConfigError(f"unknown config key {key!r} {where}; valid keys: {', '.join(valid)}")
        checked[key] = _coerce(key, value, types[key])
    return checked


def _coerce(key: str, value: Any, type_name: str) -> Any:
    # YAML 1.1 reads "5e-4" (no dot) as a string, so numbers are converted by the field's declared type.
    if value is None:
        if "None" not in type_name:
            raise ConfigError(f"config key {key!r} cannot be null")
        return None
    base = type_name.split("|")[0].strip()
    try:
        if base == "float" and not isinstance(value, bool):
            return float(value)
        if base == "int" and not isinstance(value, bool) and float(value) == int(float(value)):
            return int(float(value))
    except (TypeError, ValueError):
        pass
    else:
        if base not in ("float", "int"):
            if base == "bool" and not isinstance(value, bool):
                raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
            return value
    raise ConfigError(f"config key {key!r} must be {base}, got {value!r}")


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
SCHEDULERS = ("cosine", "tanh", "step", "multistep", "poly")
RE_MODES = ("const", "rand", "pixel")
INTERPOLATIONS = ("random", "bilinear", "bicubic", "nearest")


def _positive(value: Any) -> bool:
    return value > 0 and math.isfinite(value)


def _non_negative(value: Any) -> bool:
    return value >= 0 and math.isfinite(value)


def _fraction(value: Any) -> bool:  # [0, 1]
    return 0 <= value <= 1


def _below_one(value: Any) -> bool:  # [0, 1)
    return 0 <= value < 1


# (key, test, the valid range in words); None passes for the keys whose type allows it.
_VALUE_RULES: tuple[tuple[str, Any, str], ...] = (
    ("img_size", _positive, "a positive integer or null"),
    ("patch_size", _positive, "a positive integer or null"),
    ("in_chans", _positive, "a positive integer or null"),
    ("num_classes", lambda v: v >= 2, "an integer >= 2 or null"),
    ("drop_path", _below_one, "in [0, 1)"),
    ("train_subset", _positive, "a positive integer or null"),
    ("val_subset", _positive, "a positive integer or null"),
    ("batch_size", _positive, "a positive integer"),
    ("eval_batch_size", _positive, "a positive integer or null"),
    ("workers", _non_negative, "an integer >= 0"),
    ("crop_pct", lambda v: 0 < v <= 1, "in (0, 1] or null"),
    ("re_prob", _fraction, "in [0, 1]"),
    ("color_jitter", _non_negative, "a number >= 0"),
    ("hflip", _fraction, "in [0, 1]"),
    ("crop_pad", _non_negative, "an integer >= 0"),
    ("mixup", _non_negative, "a number >= 0"),
    ("cutmix", _non_negative, "a number >= 0"),
    ("mixup_prob", _fraction, "in [0, 1]"),
    ("mixup_switch_prob", _fraction, "in [0, 1]"),
    ("smoothing", _below_one, "in [0, 1)"),
    ("epochs", _positive, "a positive integer"),
    ("max_steps", _positive, "a positive integer or null"),
    ("time_limit", _positive, "a positive number of seconds or null"),
    ("grad_accum", _positive, "a positive integer"),
    ("lr", _positive, "a positive finite number or null"),
    ("lr_base", _positive, "a positive finite number"),
    ("lr_base_size", _positive, "a positive integer"),
    ("weight_decay", _non_negative, "a finite number >= 0"),
    ("opt_eps", _positive, "a positive finite number"),
    ("clip_grad", _positive, "a positive finite number or null"),
    ("warmup_epochs", _non_negative, "a number >= 0"),
    ("warmup_lr", _non_negative, "a finite number >= 0"),
    ("min_lr", _non_negative, "a finite number >= 0"),
    ("cooldown_epochs", _non_negative, "an integer >= 0"),
    ("model_ema_decay", _fraction, "in [0, 1]"),
    ("seed", _non_negative, "an integer >= 0"),
    ("log_interval", _positive, "a positive integer"),
    ("checkpoint_interval", _non_negative, "an integer >= 0 (0: only at epoch ends)"),
    ("checkpoint_keep", _positive, "a positive integer"),
)


def _choice(key: str, value: Any, choices: Iterable[str], nullable: bool = False) -> None:
    choices = tuple(choices)
    if value is None and nullable:
        return
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}{' or null' if nullable else ''}, got {value!r}")


def check_values(config: TrainConfig, keys: Iterable[str] | None = None) -> None:
    """Check the numeric ranges of ``keys`` (default: all); raise :class:`ConfigError` naming the valid range."""
    for key, test, valid in _VALUE_RULES:
        value = getattr(config, key)
        if (keys is None or key in keys) and value is not None and not test(value):
            raise ConfigError(f"{key} must be {valid}, got {value!r}")


def validate_config(config: TrainConfig) -> None:
    """Check every value before anything is created or written; the error names the key and its valid range.

    Raises:
        ConfigError: the first bad value.
    """
    check_values(config)
    _choice("precision", config.precision, PRECISIONS)
    _choice("dataset", config.dataset, ("folder", "fashion_mnist"))
    _choice("compile", config.compile, COMPILE_MODES, nullable=True)
    _choice("sched", config.sched, SCHEDULERS)
    _choice("re_mode", config.re_mode, RE_MODES)
    _choice("train_interpolation", config.train_interpolation, INTERPOLATIONS)
    from timm.optim import list_optimizers

    # timm also accepts a 'lookahead_' prefix on any optimizer.
    if config.opt.lower().removeprefix("lookahead_") not in list_optimizers():
        raise ConfigError(f"opt must be a timm optimizer ({', '.join(list_optimizers()[:12])}, ...; "
                          f"timm.optim.list_optimizers() lists all), got {config.opt!r}")
    if not (isinstance(config.opt_betas, list) and len(config.opt_betas) == 2
            and all(isinstance(b, int | float) and _below_one(b) for b in config.opt_betas)):
        raise ConfigError(f"opt_betas must be two numbers in [0, 1), got {config.opt_betas!r}")
    if not (isinstance(config.scale, list) and len(config.scale) == 2
            and all(isinstance(v, int | float) for v in config.scale) and 0 < config.scale[0] <= config.scale[1] <= 1):
        raise ConfigError(f"scale must be [min, max] with 0 < min <= max <= 1, got {config.scale!r}")
    if mixup_active(config) and config.batch_size % 2:
        raise ConfigError(f"batch_size must be even when mixup/cutmix is on (timm Mixup mode 'batch'), "
                          f"got {config.batch_size}")
    if not isinstance(config.model_kwargs, dict):
        raise ConfigError(f"model_kwargs must be a mapping such as {{embed_dim: 64, depth: 4}}, "
                          f"got {config.model_kwargs!r}")
    overlay = config.model_kwargs.get("pretrained_cfg_overlay")
    if overlay is not None:
        if not isinstance(overlay, dict):
            raise ConfigError(f"model_kwargs.pretrained_cfg_overlay must be a mapping, got {overlay!r}")
        if overlay.get("file") and not Path(overlay["file"]).is_file():
            raise ConfigError(f"model_kwargs.pretrained_cfg_overlay file {overlay['file']} does not exist")
    if config.resume not in (None, "auto") and not Path(config.resume).is_dir():
        raise ConfigError(f"resume checkpoint {config.resume} does not exist; pass 'auto' or a "
                          "<run>/checkpoints/step-* folder")
    if config.resume == "auto" and not config.output:
        raise ConfigError("resume=auto needs --output: the run folder to continue")


def mixup_active(config: TrainConfig) -> bool:
    """Whether mixup or cutmix is applied."""
    return config.mixup_prob > 0 and (config.mixup > 0 or config.cutmix > 0)


def check_model_name(name: str) -> None:
    """Raise :class:`ConfigError` if ``name`` is not a registered timm (or vitzoo) model."""
    import timm

    import vitzoo  # noqa: F401 - importing registers the vitzoo models with timm

    if not timm.is_model(name):
        similar = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        hint = f" (similar: {', '.join(similar)})" if similar else ""
        raise ConfigError(f"unknown model {name!r}{hint}; vitzoo.list_models() lists the zoo's models, "
                          "timm.list_models() timm's")


def create_model_from_config(config: TrainConfig, num_classes: int, in_chans: int,
                             checkpoint_path: str | None = None, pretrained_file: str | None = None) -> nn.Module:
    """Create the timm model of ``config`` (optional kwargs only when set, so each model keeps its defaults).

    ``checkpoint_path`` is loaded as is (timm's ``load_checkpoint``); ``pretrained_file`` (a vitzoo model's weights)
    is read by :func:`vitzoo.convert.load_checkpoint_file` and goes through the model's ``checkpoint_filter_fn``
    (timm's pretrained path), which converts the authors' checkpoint layouts. Its head and first conv are taken as
    they are (no classifier reset, no input-channel adaptation).

    Raises:
        ConfigError: a ``model_kwargs`` key the model does not take, or weights that do not fit it.
    """
    import timm

    import vitzoo  # noqa: F401 - registers the vitzoo models

    kwargs = dict(config.model_kwargs)
    for key in ("img_size", "patch_size"):
        if getattr(config, key) is not None:
            kwargs[key] = getattr(config, key)
    if config.drop_path:
        kwargs["drop_path_rate"] = config.drop_path
    if pretrained_file:
        from vitzoo.convert import load_checkpoint_file

        state_dict = load_checkpoint_file(pretrained_file)
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(state_dict=state_dict, num_classes=num_classes,
                                                                   first_conv=None))
    try:
        return timm.create_model(config.model, num_classes=num_classes, in_chans=in_chans,
                                 checkpoint_path=checkpoint_path or "", **kwargs)
    except TypeError as error:  # an unexpected keyword argument of the model class
        raise ConfigError(f"model {config.model} does not accept model_kwargs {config.model_kwargs}: "
                          f"{_first_line(error)}") from None
    except (RuntimeError, KeyError) as error:  # load_state_dict: missing keys or shapes that differ
        if not checkpoint_path:
            raise
        raise ConfigError(f"weights {checkpoint_path} do not fit {config.model} with {num_classes} classes and "
                          f"{in_chans} channels: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def dataset_classes(config: TrainConfig) -> list[str]:
    """The run's class names in index order: Fashion-MNIST's, or the train split's class folders.

    Raises:
        ConfigError: a missing split, no class folders, or ``num_classes`` smaller than the number of classes.
    """
    try:
        folder = check_dataset_path(config.dataset, config.data_dir, ("train", "val"))
        classes = list(FASHION_MNIST_CLASSES) if config.dataset == "fashion_mnist" else folder_classes(folder / "train")
    except DataError as error:
        raise ConfigError(str(error)) from None
    if config.num_classes is not None and config.num_classes < len(classes):
        raise ConfigError(f"num_classes={config.num_classes} is smaller than the dataset's {len(classes)} classes; "
                          f"set num_classes >= {len(classes)} or null")
    return classes


def build_transforms(config: TrainConfig, model: nn.Module) -> tuple[Any, Any, dict]:
    """Return (train transform, eval transform, resolved data config) for the dataset of ``config``."""
    from timm.data import resolve_data_config

    if config.dataset == "fashion_mnist":
        size = config.img_size or 28
        data_config = {"input_size": (1, size, size), "interpolation": "bilinear", "crop_pct": 1.0,
                       "mean": FASHION_MNIST_MEAN, "std": FASHION_MNIST_STD}
        train_tf = GreyTransform(True, size, pad=config.crop_pad, hflip=config.hflip)
        return train_tf, GreyTransform(False, size), data_config
    args: dict[str, Any] = {"crop_pct": config.crop_pct} if config.crop_pct else {}
    if config.img_size:
        # The model's pretrained_cfg keeps its registered input size; a run at another size must say so.
        args["input_size"] = (config.in_chans or 3, config.img_size, config.img_size)
    data_config = resolve_data_config(args, model=model)
    augment = AugmentConfig(config.auto_augment, config.re_prob, config.re_mode, config.color_jitter, config.hflip,
                            tuple(config.scale), config.train_interpolation)
    train_tf, eval_tf = folder_transforms(data_config, augment)
    return train_tf, eval_tf, data_config


def param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: no decay on 1-d params, biases and ``no_weight_decay()`` names; ``_optim`` overrides.

    A parameter carrying an ``_optim`` dict (H3's SSM parameters) gets its own group with those settings; its ``lr`` is
    a cap, so the group's base lr is ``min(cap, lr)`` and the scheduler scales it like the others.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or name.endswith(".bias") or any(fnmatch.fnmatch(name, s) for s in skip)
        settings = {"weight_decay": 0.0 if no_decay else weight_decay, "lr": lr}
        override = getattr(param, "_optim", None) or {}
        for key, value in override.items():
            settings[key] = min(value, lr) if key == "lr" else value
        group_key = tuple(sorted(settings.items()))
        groups.setdefault(group_key, {**settings, "params": []})["params"].append(param)
    return list(groups.values())


def build_optimizer(config: TrainConfig, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Create the timm optimizer over :func:`param_groups`."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(param_groups(model, lr, config.weight_decay), opt=config.opt, lr=lr,
                               weight_decay=config.weight_decay, eps=config.opt_eps, betas=tuple(config.opt_betas))


def build_criterion(config: TrainConfig) -> nn.Module:
    """Training loss: soft-target CE (or BCE) with mixup, label-smoothed CE otherwise."""
    from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if mixup_active(config):
        # Smoothing is folded into the mixed targets by Mixup.
        return BinaryCrossEntropy(target_threshold=None) if config.bce_loss else SoftTargetCrossEntropy()
    if config.bce_loss:
        return BinaryCrossEntropy(smoothing=config.smoothing)
    if config.smoothing > 0:
        return LabelSmoothingCrossEntropy(config.smoothing)
    return nn.CrossEntropyLoss()


@torch.no_grad()
def evaluate(model: nn.Module, loader, accelerator, use_autocast: bool = False,
             progress: bool = False) -> dict[str, float]:
    """Exact top-1/top-5 and mean cross-entropy over the whole loader, gathered across processes.

    Samples whose target is :data:`~vitzoo.train.data.UNREADABLE_TARGET` (stand-ins for unreadable files) are not
    scored.

    Args:
        model: the model (wrapped by ``prepare``, or a bare module such as the EMA copy).
        loader: a prepared eval loader (``gather_for_metrics`` drops the samples padded for even batches).
        accelerator: the run's accelerator.
        use_autocast: run under ``accelerator.autocast()`` (needed for modules not wrapped by ``prepare``).
        progress: show a tqdm bar on the main process (only when stderr is a terminal).
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


# ----------------------------------------------------------------------------------------------------------------------
# checkpoints


def list_checkpoints(output: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``<output>/checkpoints``, oldest first (temporary folders are ignored)."""
    folder = Path(output) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


class CheckpointError(ConfigError):
    """A checkpoint file that is missing, unreadable or holds more than tensors and plain data."""


def _rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain numbers, so that ``torch.load(weights_only=True)`` reads them."""
    version, python_state, python_gauss = random.getstate()
    _, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = np.random.get_state()
    state = {"python_version": version, "python": torch.tensor(python_state, dtype=torch.int64),
             "python_gauss": python_gauss, "numpy": torch.from_numpy(numpy_keys.astype(np.int64)),
             "numpy_pos": int(numpy_pos), "numpy_has_gauss": int(numpy_has_gauss), "numpy_gauss": float(numpy_gauss),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((state["python_version"], tuple(state["python"].tolist()), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``: readers see the old or the new file,
    never a partial one."""
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _point(link: Path, target_name: str) -> None:
    """Make ``link`` a relative symlink to the sibling ``target_name``, replacing any old link atomically."""
    tmp = link.with_name(f".tmp-{link.name}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target_name)
    os.replace(tmp, link)


def remove_temporary_checkpoints(output: str | os.PathLike) -> None:
    """Delete the ``.tmp-*`` folders that a run killed while writing a checkpoint leaves behind."""
    folder = Path(output) / "checkpoints"
    if folder.is_dir():
        for tmp in folder.glob(".tmp-*"):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


def save_checkpoint(run: _Run, tag_updates: int) -> Path:
    """Write ``<output>/checkpoints/step-<updates>`` atomically: all files go to a temp folder moved by ``os.replace``.

    Contents: ``model.safetensors`` (and ``ema.safetensors``), ``training_state.pt`` (optimizer, grad scaler, epoch,
    batch and update counters), ``rng-<rank>.pt`` per process (tensors and numbers only), and ``meta.json`` (model
    name, config, class names, counters). Rotation keeps the newest ``checkpoint_keep`` checkpoints and the best
    epoch's; the symlinks ``checkpoints/last`` and ``checkpoints/best`` name them.
    """
    from safetensors.torch import save_model

    acc = run.accelerator
    folder = Path(run.output) / "checkpoints"
    final = folder / f"{CHECKPOINT_PREFIX}{tag_updates:08d}"
    tmp = folder / f".tmp-{CHECKPOINT_PREFIX}{tag_updates:08d}"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    torch.save(_rng_state(), tmp / f"rng-{acc.process_index}.pt")
    if acc.is_main_process:
        save_model(acc.unwrap_model(run.model), str(tmp / "model.safetensors"))
        if run.ema is not None:
            save_model(run.ema.module, str(tmp / "ema.safetensors"))
        state = {"optimizer": run.optimizer.state_dict(), "epoch": run.epoch, "batches_done": run.batches_done,
                 "num_updates": run.num_updates, "best": run.best}
        if acc.scaler is not None:
            state["scaler"] = acc.scaler.state_dict()
        torch.save(state, tmp / "training_state.pt")
    acc.wait_for_everyone()
    if acc.is_main_process:
        meta = {**run.identity, "epoch": run.epoch, "batches_done": run.batches_done, "num_updates": run.num_updates,
                "data_config": run.data_config, "config": run.config.to_dict()}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        keep = set(list_checkpoints(run.output)[-run.config.checkpoint_keep:])
        best = run.best.get("checkpoint")
        if best and (folder / best).is_dir():
            keep.add(folder / best)
            _point(folder / "best", best)
        for old in list_checkpoints(run.output):
            if old not in keep:
                shutil.rmtree(old, ignore_errors=True)
        _point(folder / "last", final.name)
    acc.wait_for_everyone()
    return final


# What a resumed run must share with the checkpoint's run: a difference changes the model, the data or the schedule.
RESUME_CONFIG_KEYS = ("model", "model_kwargs", "img_size", "patch_size", "dataset", "data_dir", "batch_size",
                      "grad_accum", "train_subset")


def run_identity(config: TrainConfig, num_processes: int, in_chans: int, num_classes: int,
                 classes: list[str]) -> dict[str, Any]:
    """The facts of a run that ``meta.json`` records and a resume must match (see :func:`check_resume_matches`)."""
    return {"model": config.model, "dataset": config.dataset, "num_processes": num_processes, "in_chans": in_chans,
            "num_classes": num_classes, "classes": list(classes)}


def check_resume_matches(folder: Path, meta: dict, identity: dict, config: TrainConfig) -> None:
    """Raise :class:`ConfigError` naming the first setting in which this run differs from the checkpoint's."""
    saved_config = meta.get("config", {})
    pairs = [(key, saved_config.get(key), getattr(config, key)) for key in RESUME_CONFIG_KEYS]
    pairs += [(key, meta.get(key), identity[key]) for key in ("num_processes", "in_chans", "num_classes", "classes")]
    for key, saved, now in pairs:
        if key == "data_dir" and saved and now:
            saved, now = os.path.abspath(saved), os.path.abspath(now)
        if saved != now:
            if key == "classes":
                saved = f"{len(saved or [])} classes {(saved or [])[:3]}..."
                now = f"{len(now)} classes {now[:3]}..."
            raise ConfigError(f"cannot resume from {folder}: its {key} is {saved!r}, this run's is {now!r}; "
                              "use the checkpoint's settings or start a new run in another --output")


@dataclass
class _CheckpointFiles:
    """The decoded files of one checkpoint folder, read in full before anything is restored."""

    folder: Path
    meta: dict
    state: dict
    rng: dict


def _read_file(path: Path, reader) -> Any:
    import pickle

    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        return reader(path)
    except pickle.UnpicklingError as error:
        # weights_only refuses any global (a class or function) that is not a tensor type: a pickle that would run
        # code names one, plain garbage fails earlier.
        detail = next((line.strip() for line in str(error).splitlines() if "GLOBAL" in line), None)
        if detail:
            raise CheckpointError(f"{path} refused: it would load objects other than tensors and plain data "
                                  f"({detail[:120]})") from None
        raise CheckpointError(f"{path} is unreadable (not a torch.save file of tensors and plain data)") from None
    except Exception as error:  # noqa: BLE001 - any decoding failure means the file is unusable
        raise CheckpointError(f"{path} is unreadable ({type(error).__name__}: {_first_line(error)[:120]})") from None


def _load_tensors(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint(folder: Path, identity: dict, config: TrainConfig, process_index: int) -> _CheckpointFiles:
    """Read and check every file of a checkpoint folder; nothing of the run is changed.

    Raises:
        CheckpointError: a file is missing, corrupt or holds more than tensors and plain data.
        ConfigError: the checkpoint belongs to a run with other settings (:func:`check_resume_matches`).
    """
    from safetensors.torch import load_file

    meta = _read_file(folder / "meta.json", lambda path: json.loads(path.read_text()))
    if not isinstance(meta, dict):
        raise CheckpointError(f"{folder / 'meta.json'} is not a JSON object")
    check_resume_matches(folder, meta, identity, config)
    state = _read_file(folder / "training_state.pt", _load_tensors)
    missing = {"optimizer", "epoch", "batches_done", "num_updates"} - set(state if isinstance(state, dict) else ())
    if missing:
        raise CheckpointError(f"{folder / 'training_state.pt'} lacks {', '.join(sorted(missing))}")
    rng = _read_file(folder / f"rng-{process_index}.pt", _load_tensors)
    for name in ("model.safetensors", "ema.safetensors"):
        if name == "model.safetensors" or (folder / name).exists():
            _read_file(folder / name, load_file)
    return _CheckpointFiles(folder, meta, state, rng)


def find_resume_checkpoint(config: TrainConfig, output: Path, identity: dict, accelerator) -> _CheckpointFiles | None:
    """The checkpoint to resume from: ``config.resume``'s folder, or with ``'auto'`` the newest intact one under
    ``output`` (older ones are tried when newer ones are damaged, with a warning); None for 'auto' without any.

    Raises:
        ConfigError: a damaged explicit checkpoint, no intact checkpoint for 'auto', or settings that differ.
    """
    if config.resume != "auto":
        return read_checkpoint(Path(config.resume), identity, config, accelerator.process_index)
    found = list_checkpoints(output)
    damaged: list[str] = []
    for folder in reversed(found):
        try:
            files = read_checkpoint(folder, identity, config, accelerator.process_index)
        except CheckpointError as error:
            damaged.append(str(error))
            continue
        if damaged and accelerator.is_main_process:
            _logger.warning("resume auto: skipped %d damaged newer checkpoint(s) (%s); resuming from %s",
                            len(damaged), "; ".join(damaged), folder.name)
        return files
    if damaged:
        raise ConfigError(f"no intact checkpoint under {output}/checkpoints (newest: {damaged[0]}); remove the "
                          "damaged ones to start afresh, or pass another --output")
    return None


def load_checkpoint_into(run: _Run, files: _CheckpointFiles) -> None:
    """Restore model, EMA, optimizer, scaler, counters and (this process's) RNG state from a checked checkpoint.

    Raises:
        ConfigError: weights or optimizer state whose shapes do not fit this run's model.
    """
    from safetensors.torch import load_model

    acc = run.accelerator
    targets = [(acc.unwrap_model(run.model), "model.safetensors")]
    if run.ema is not None and (files.folder / "ema.safetensors").is_file():
        targets.append((run.ema.module, "ema.safetensors"))
    try:
        for module, name in targets:
            load_model(module, str(files.folder / name))
        run.optimizer.load_state_dict(files.state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise ConfigError(f"cannot resume from {files.folder}: its weights or optimizer state do not fit "
                          f"{run.config.model} ({_first_line(error)[:200]})") from None
    if acc.scaler is not None and "scaler" in files.state:
        acc.scaler.load_state_dict(files.state["scaler"])
    state = files.state
    run.epoch, run.batches_done, run.num_updates = state["epoch"], state["batches_done"], state["num_updates"]
    run.best = state.get("best", run.best)
    _set_rng_state(files.rng)


# ----------------------------------------------------------------------------------------------------------------------
# the run


@dataclass
class _Run:
    """Mutable state of one training run (what checkpoints save)."""

    config: TrainConfig
    accelerator: Any
    output: str
    model: nn.Module
    optimizer: Any
    ema: Any
    identity: dict  # run_identity(): model, dataset, processes, channels, classes (meta.json, checked on resume)
    data_config: dict
    epoch: int = 0
    batches_done: int = 0
    num_updates: int = 0
    best: dict = field(default_factory=dict)
    last_finite_update: int = 0  # the last update after which the loss was checked finite (not saved)


class JsonLog:
    """Append-only JSON-lines log written by the main process."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **values: Any) -> None:
        """Append one record ``{"event": event, "time": unix seconds, **values}``."""
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps({"event": event, "time": round(time.time(), 3), **values}) + "\n")


def requested_output(config: TrainConfig) -> Path | None:
    """The run folder the config names: ``output``, else an explicit resume checkpoint's run folder, else None (a
    fresh timestamped folder, :func:`fresh_output`)."""
    if config.output:
        return Path(config.output)
    if config.resume not in (None, "auto"):
        return Path(config.resume).resolve().parent.parent
    return None


def check_output_folder(config: TrainConfig) -> None:
    """Refuse to start a new run in a folder that holds files (another run's), unless resuming it.

    Raises:
        ConfigError: the folder is not empty and ``resume`` is not set, or it is not a folder.
    """
    output = requested_output(config)
    if output is None or not output.exists():
        return
    if not output.is_dir():
        raise ConfigError(f"output {output} is a file, not a folder; choose another --output")
    entries = sorted(entry.name for entry in output.iterdir())
    if entries and not config.resume:
        raise ConfigError(f"output folder {output} already holds a run ({', '.join(entries[:4])}); pass --resume auto "
                          "to continue it, or another --output (unset: a fresh timestamped folder)")


def fresh_output(config: TrainConfig, root: str | os.PathLike = Path("output") / "train") -> Path:
    """Create and return ``<root>/<YYYYmmdd-HHMMSS>-<model>-<dataset>`` (timm's layout), with ``-1``, ``-2``, ...
    appended when a run started in the same second took the name."""
    base = Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{config.model}-{config.dataset}"
    Path(root).mkdir(parents=True, exist_ok=True)
    for count in range(1000):
        candidate = base if count == 0 else base.with_name(f"{base.name}-{count}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise ConfigError(f"could not create a fresh run folder next to {base}")


def _run_folder(config: TrainConfig, accelerator) -> Path:
    """The run folder, the same on every process (the main process picks a fresh one's name)."""
    output = requested_output(config)
    if output is not None:
        return output
    from accelerate.utils import broadcast_object_list

    names = [str(fresh_output(config)) if accelerator.is_main_process else None]
    if accelerator.num_processes > 1:
        broadcast_object_list(names)
    return Path(names[0])


def warn_about_changed_settings(config: TrainConfig, accelerator) -> None:
    """Warn where the launcher or the device does not give what the config asks for."""
    if not accelerator.is_main_process:
        return
    if config.precision == "fp16" and accelerator.device.type == "cpu":
        _logger.warning("precision=fp16 has no effect on CPU: the run trains in fp32 (precision=bf16 is CPU autocast)")
    # accelerate launch's simple launcher sets MASTER_ADDR for --num_processes > 1 but starts one process on CPU
    # unless --multi_cpu is given.
    if accelerator.num_processes == 1 and os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" \
            and "MASTER_ADDR" in os.environ:
        _logger.warning("accelerate launch --cpu started one process: several CPU processes need --multi_cpu "
                        "(or torchrun); the run trains as a single process")


def mean_over_processes(total: torch.Tensor, count: int, accelerator) -> float:
    """The mean of the values whose sum on this process is ``total`` over ``count`` values, taken over the values
    of all processes (every process must call it at the same point: it is one collective)."""
    pair = torch.stack([total.detach().float().reshape(()), torch.tensor(float(count), device=total.device)])
    if accelerator.num_processes > 1:
        pair = accelerator.reduce(pair, reduction="sum")
    return (pair[0] / pair[1].clamp(min=1)).item()


def train(config: TrainConfig) -> dict[str, Any]:
    """Train (and evaluate every epoch) as ``config`` says; return the final metrics.

    Every check that can fail (config values, dataset folders, the model's kwargs, the output folder, the resume
    checkpoint) runs before the run folder is written, so a failed start leaves an existing run untouched.

    Raises:
        ConfigError: bad values, missing or unusable data, an occupied output folder, or a resume checkpoint that is
            damaged or belongs to another run.
        NonFiniteLossError: the loss became NaN/inf; the last good checkpoint is kept.
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration
    from timm.data import Mixup
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3, update_summary
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    validate_config(config)
    check_model_name(config.model)
    classes = dataset_classes(config)
    check_output_folder(config)

    # cpu=True without CUDA: accelerate then forms a gloo process group from torchrun's environment (else each
    # CPU process would train alone).
    accelerator = Accelerator(mixed_precision=PRECISIONS[config.precision], cpu=not torch.cuda.is_available(),
                              gradient_accumulation_steps=config.grad_accum,
                              dataloader_config=DataLoaderConfiguration(even_batches=True))
    warn_about_changed_settings(config, accelerator)
    seed_everything(config.seed)  # model init is identical on every process and every run
    in_chans = config.in_chans or (1 if config.dataset == "fashion_mnist" else 3)
    num_classes = config.num_classes or len(classes)
    model = create_model_from_config(config, num_classes, in_chans)
    train_tf, eval_tf, data_config = build_transforms(config, model)
    try:
        train_set = build_dataset(config.dataset, config.data_dir, "train", train_tf, config.seed, classes=classes)
        val_set = build_dataset(config.dataset, config.data_dir, "val", eval_tf, config.seed, limit=config.val_subset,
                                classes=classes, score_substitutes=False)
        train_set.check_readable()
        val_set.check_readable()
    except DataError as error:
        raise ConfigError(str(error)) from None
    train_sampler = EpochShuffleSampler(len(train_set), config.seed, num_samples=config.train_subset)
    val_sampler = EpochShuffleSampler(len(val_set), config.seed, shuffle=False)
    loader_args = {"num_workers": config.workers, "worker_init_fn": worker_init if config.workers else None,
                   "pin_memory": torch.cuda.is_available()}
    train_loader = DataLoader(train_set, batch_size=config.batch_size, sampler=train_sampler, drop_last=True,
                              **loader_args)
    val_loader = DataLoader(val_set, batch_size=config.eval_batch_size or 2 * config.batch_size, sampler=val_sampler,
                            **loader_args)
    if len(train_loader) < accelerator.num_processes:
        raise ConfigError(f"the training set has {len(train_sampler)} samples, fewer than one batch of "
                          f"{config.batch_size} per process; lower batch_size")

    global_batch = config.batch_size * accelerator.num_processes * config.grad_accum
    lr = config.lr if config.lr is not None else config.lr_base * global_batch / config.lr_base_size
    optimizer = build_optimizer(config, model, lr)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    # Only the training forward is compiled; checkpoints, EMA and evaluation keep the plain module (same parameters).
    forward = torch.compile(model, mode=config.compile) if config.compile else model
    updates_per_epoch = math.ceil(len(train_loader) / config.grad_accum)
    # timm semantics: the run lasts epochs + cooldown_epochs (cooldown at min_lr), as in timm's train.py.
    scheduler, total_epochs = create_scheduler_v2(optimizer.optimizer, sched=config.sched, num_epochs=config.epochs,
                                       warmup_epochs=config.warmup_epochs, warmup_lr=config.warmup_lr,
                                       min_lr=config.min_lr, cooldown_epochs=config.cooldown_epochs,
                                       step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    ema = None
    if config.model_ema:
        ema = ModelEmaV3(accelerator.unwrap_model(model), decay=config.model_ema_decay,
                         use_warmup=config.model_ema_warmup)
    mixup = None
    if mixup_active(config):
        mixup = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, prob=config.mixup_prob,
                      switch_prob=config.mixup_switch_prob, mode="batch", label_smoothing=config.smoothing,
                      num_classes=num_classes)
    criterion = build_criterion(config)
    output = _run_folder(config, accelerator)
    identity = run_identity(config, accelerator.num_processes, in_chans, num_classes, classes)
    run = _Run(config, accelerator, str(output), model, optimizer, ema, identity, data_config)

    resumed_from = None
    if config.resume:
        files = find_resume_checkpoint(config, output, identity, accelerator)
        if files is not None:
            load_checkpoint_into(run, files)
            run.last_finite_update = run.num_updates
            resumed_from = files.folder
            accelerator.print(f"resumed from {files.folder} (epoch {run.epoch}, update {run.num_updates})")
        else:
            accelerator.print(f"no checkpoint under {output}/checkpoints; starting from scratch")
    # Everything above only reads; from here on the run folder is written.
    log = JsonLog(output / "log.jsonl", accelerator.is_main_process)
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        remove_temporary_checkpoints(output)
        write_atomic(output / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    if resumed_from is not None:
        log.write("resume", checkpoint=str(resumed_from), epoch=run.epoch, num_updates=run.num_updates)
    if run.num_updates == 0 and run.batches_done == 0:
        log.write("start", model=config.model, lr=lr, global_batch=global_batch, processes=accelerator.num_processes,
                  output=str(output), params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 4))
    scheduler.step_update(run.num_updates)
    last_checkpoint = resumed_from
    metrics: dict[str, Any] = {}
    max_steps = config.max_steps

    run_start, out_of_time = time.time(), False
    while run.epoch < total_epochs and not out_of_time and not (max_steps and run.num_updates >= max_steps):
        epoch = run.epoch
        train_sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        train_loader.set_epoch(epoch)
        loader = train_loader
        if run.batches_done:
            from accelerate import skip_first_batches

            loader = skip_first_batches(train_loader, run.batches_done)
            loader.set_epoch(epoch)
        model.train()
        bar = tqdm(total=len(train_loader), initial=run.batches_done, desc=f"epoch {epoch}", leave=False,
                   disable=not (accelerator.is_local_main_process and config.progress))
        # The loss sum and a "still finite" flag stay on the device: reading them every step would make the host
        # wait for the GPU each step. They are read at log intervals, before every checkpoint and at the epoch end.
        loss_sum = torch.zeros((), device=accelerator.device)
        finite = torch.ones((), dtype=torch.bool, device=accelerator.device)
        loss_count, start = 0, time.time()

        for images, targets in loader:
            # Per-batch seed: mixup and drop path draw the same numbers whether or not the run was resumed.
            seed_everything(sample_seed(config.seed + 1 + accelerator.process_index, epoch, run.batches_done))
            if mixup is not None:
                images, targets = mixup(images, targets)
            with accelerator.accumulate(model):
                loss = criterion(forward(images), targets)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.clip_grad:
                    accelerator.clip_grad_norm_(model.parameters(), config.clip_grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            run.batches_done += 1
            loss = loss.detach().float()
            loss_sum += loss
            finite &= torch.isfinite(loss)
            loss_count += 1
            bar.update(1)
            if not accelerator.sync_gradients:
                continue
            run.num_updates += 1
            scheduler.step_update(run.num_updates)
            if ema is not None:
                ema.update(accelerator.unwrap_model(model), step=run.num_updates)
            end_of_epoch = run.batches_done >= len(train_loader)
            save_now = (config.checkpoint_interval and run.num_updates % config.checkpoint_interval == 0
                        and not end_of_epoch)
            if run.num_updates % config.log_interval == 0 or save_now:
                _check_finite(finite, run, accelerator, log, epoch, last_checkpoint)
            if run.num_updates % config.log_interval == 0:
                mean_loss = mean_over_processes(loss_sum, loss_count, accelerator)
                log.write("train", epoch=epoch, num_updates=run.num_updates, loss=mean_loss,
                          lr=optimizer.param_groups[0]["lr"])
                bar.set_postfix(loss=f"{mean_loss:.4f}")
            if save_now:
                last_checkpoint = save_checkpoint(run, run.num_updates)
            if max_steps and run.num_updates >= max_steps:
                break
            # Clocks differ between processes: all leave at the same update once any is out of time.
            if config.time_limit and _processes_with(time.time() - run_start > config.time_limit, accelerator):
                out_of_time = True
                break
        _check_finite(finite, run, accelerator, log, epoch, last_checkpoint)
        bar.close()
        skipped = report_unreadable(train_set, accelerator)
        epoch_done = run.batches_done >= len(train_loader)
        metrics = {"epoch": epoch, "num_updates": run.num_updates,
                   "train_loss": mean_over_processes(loss_sum, loss_count, accelerator),
                   "lr": optimizer.param_groups[0]["lr"], "epoch_time": round(time.time() - start, 2)}
        metrics.update({f"eval_{k}": v for k, v in evaluate(model, val_loader, accelerator,
                                                              progress=config.progress).items()})
        if ema is not None:
            metrics.update({f"ema_{k}": v for k, v in evaluate(ema.module, val_loader, accelerator, True,
                                                               progress=config.progress).items()})
        skipped += report_unreadable(val_set, accelerator)
        metrics["skipped_files"] = skipped
        log.write("eval", **metrics)
        if accelerator.is_main_process:
            update_summary(epoch, {"loss": metrics["train_loss"]},
                           {key: metrics[f"eval_{key}"] for key in ("loss", "top1", "top5")},
                           output / "summary.csv", lr=metrics["lr"])
        accelerator.print(_summary(metrics))
        if skipped and accelerator.is_main_process:
            _logger.warning("%d unreadable image file(s) skipped so far (named in the warnings above)", skipped)
        key = "ema_top1" if ema is not None else "eval_top1"
        if metrics[key] >= run.best.get("top1", -1.0):
            run.best = {"top1": metrics[key], "epoch": epoch, "metric": key,
                        "checkpoint": f"{CHECKPOINT_PREFIX}{run.num_updates:08d}"}
        if epoch_done:
            run.epoch, run.batches_done = epoch + 1, 0
        last_checkpoint = save_checkpoint(run, run.num_updates)
    accelerator.wait_for_everyone()
    metrics["best"] = run.best
    metrics["stopped_by_time_limit"] = out_of_time
    metrics["checkpoint"] = str(last_checkpoint) if last_checkpoint else None
    metrics["output"] = str(output)
    accelerator.end_training()
    return metrics


def _processes_with(flag: bool | torch.Tensor, accelerator) -> int:
    """How many processes have ``flag`` set. One collective, the same answer everywhere: every process must take the
    same branch, or the others would hang in their next collective."""
    count = torch.as_tensor(flag, device=accelerator.device).to(torch.int32).reshape(1)
    if accelerator.num_processes > 1:
        count = accelerator.reduce(count, reduction="sum")
    return int(count.item())


def _check_finite(finite: torch.Tensor, run: _Run, accelerator, log: JsonLog, epoch: int,
                  last_checkpoint: Path | None) -> None:
    """Raise :class:`NonFiniteLossError` if any loss since the last check was NaN/inf (``finite`` is False)."""
    if _processes_with(finite, accelerator) < accelerator.num_processes:
        message = (f"non-finite loss at epoch {epoch} after update {run.last_finite_update}; stopped. "
                   f"Last good checkpoint: {last_checkpoint or 'none'}. Try precision=bf16/fp32, a lower lr or "
                   "clip_grad")
        log.write("nonfinite", epoch=epoch, num_updates=run.num_updates, last_finite_update=run.last_finite_update)
        raise NonFiniteLossError(message)
    run.last_finite_update = run.num_updates


def _summary(metrics: dict[str, Any]) -> str:
    text = (f"epoch {metrics['epoch']} update {metrics['num_updates']}: train_loss {metrics['train_loss']:.4f} "
            f"top1 {metrics['eval_top1']:.2f} top5 {metrics['eval_top5']:.2f}")
    if "ema_top1" in metrics:
        text += f" | ema top1 {metrics['ema_top1']:.2f} top5 {metrics['ema_top5']:.2f}"
    return text + f" ({metrics['epoch_time']:.1f}s)"


# ----------------------------------------------------------------------------------------------------------------------
# evaluation of a saved model

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
        checkpoint: a folder written by :func:`train` (``step-*`` or the run folder: its latest checkpoint), or a
            weights file: for a vitzoo model it goes through the model's checkpoint filter (so the authors' InLine
            and QT-ViT checkpoints load directly), for other timm models it is timm's ``checkpoint_path``.
        dataset: ``'folder'`` or ``'fashion_mnist'``; default: the checkpoint's (``meta.json``), else ``'folder'``.
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
            meta = _read_file(path / "meta.json", lambda file: json.loads(file.read_text()))
            saved = meta.get("config", {}) if isinstance(meta, dict) else {}
            if not {"model", "model_kwargs", "img_size", "patch_size"} <= set(saved) or "num_classes" not in meta:
                raise CheckpointError(f"{path / 'meta.json'} lacks the run's config (not written by vitzoo-train)")
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
    _choice("dataset", dataset, ("folder", "fashion_mnist"))
    _choice("precision", precision, PRECISIONS)
    if not isinstance(config.model_kwargs, dict):
        raise ConfigError(f"model_kwargs must be a mapping such as {{embed_dim: 64, depth: 4}}, "
                          f"got {config.model_kwargs!r}")
    check_model_name(config.model)
    try:
        folder = check_dataset_path(dataset, data_dir, ("val",))
        if dataset == "fashion_mnist":
            classes = classes or list(FASHION_MNIST_CLASSES)
        else:
            classes = classes or folder_classes(folder / "val")
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
        _read_file(weights_file, load_file)
        try:
            load_model(model, str(weights_file))
        except RuntimeError as error:
            raise ConfigError(f"weights {weights_file} do not fit {config.model}: {_first_line(error)}") from None
    _, eval_tf, data_config = build_transforms(config, model)
    try:
        val_set = build_dataset(dataset, data_dir, "val", eval_tf, seed=0, limit=val_subset, classes=classes,
                                score_substitutes=False)
        val_set.check_readable()
    except DataError as error:
        raise ConfigError(str(error)) from None
    sampler = EpochShuffleSampler(len(val_set), 0, shuffle=False)
    loader = DataLoader(val_set, batch_size=batch_size, sampler=sampler, num_workers=workers,
                        worker_init_fn=worker_init if workers else None)
    model, loader = accelerator.prepare(model, loader)
    metrics = evaluate(model, loader, accelerator, progress=True)
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


def check_results_file(path: str | os.PathLike) -> None:
    """Raise :class:`ConfigError` unless a row can be appended to ``path``: it must be a new file or a CSV whose
    header is :data:`RESULT_COLUMNS` (checked before an evaluation runs, so its metrics are never lost)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"results file {path} is a folder; pass a .csv file path (--results-file)")
    if path.is_file() and path.stat().st_size:
        with path.open(newline="") as handle:
            header = handle.readline().strip()
        if header != ",".join(RESULT_COLUMNS):
            raise ConfigError(f"results file {path} has another header ({header[:80]}); pass a new --results-file")


def append_result(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append ``row`` to the CSV at ``path`` in :data:`RESULT_COLUMNS` order, writing the header for a new file.

    The file is rewritten through :func:`write_atomic`, so a reader never sees a half-written row.
    """
    import csv
    import io

    check_results_file(path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.is_file() else ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(RESULT_COLUMNS), extrasaction="ignore")
    if not text:
        writer.writeheader()
    writer.writerow(row)
    write_atomic(path, text + buffer.getvalue())
