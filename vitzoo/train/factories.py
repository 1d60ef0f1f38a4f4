"""Builders of a run's parts from its :class:`~vitzoo.train.config.TrainConfig`: the model, the class list, the
transforms, the optimizer, the loss (timm's, with the zoo's defaults) and the drop-path ramp."""
from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from vitzoo.train.config import ConfigError, TrainConfig, first_line, mixup_active
from vitzoo.train.data import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    AugmentConfig,
    DataError,
    DeviceAugment,
    GreyBatchAugment,
    GreyTransform,
    check_dataset_path,
    folder_transforms,
    split_classes,
)


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
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(error))
        if unexpected and unexpected.group(1) in ("img_size", "patch_size") and \
                unexpected.group(1) not in config.model_kwargs:
            raise ConfigError(f"model {config.model} takes no {unexpected.group(1)}; set {unexpected.group(1)}=null") \
                from None
        raise ConfigError(f"model {config.model} does not accept model_kwargs {config.model_kwargs}: "
                          f"{first_line(error)}") from None
    except (RuntimeError, KeyError, ValueError, ZeroDivisionError) as error:
        if checkpoint_path:  # load_state_dict: missing keys or shapes that differ
            raise ConfigError(f"weights {checkpoint_path} do not fit {config.model} with {num_classes} classes and "
                              f"{in_chans} channels: {first_line(error)}") from None
        raise ConfigError(f"cannot build {config.model} with model_kwargs {config.model_kwargs}: "
                          f"{first_line(error)}") from None


def dataset_classes(config: TrainConfig) -> list[str]:
    """The run's class names in index order: Fashion-MNIST's, a packed store's, or the train split's class folders.

    Raises:
        ConfigError: a missing split, no class folders, or ``num_classes`` smaller than the number of classes.
    """
    try:
        folder = check_dataset_path(config.dataset, config.data_dir, ("train", "val"))
        classes = split_classes(config.dataset, folder, "train")
    except DataError as error:
        raise ConfigError(str(error)) from None
    if config.num_classes is not None and config.num_classes < len(classes):
        raise ConfigError(f"num_classes={config.num_classes} is smaller than the dataset's {len(classes)} classes; "
                          f"set num_classes >= {len(classes)} or null")
    return classes


def model_input_dtype(config: TrainConfig) -> torch.dtype:
    """The dtype of the training batches ``config``'s data hands the model: for image folders, whose device stage
    normalises the batches, the 16-bit dtype of a mixed-precision run (its autocast would round float32 batches to it
    before the first layer, the patch embedding's or stem's convolution; rounding once in the device stage gives the
    same numbers); else float32."""
    if config.dataset == "fashion_mnist":
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision, torch.float32)


def build_transforms(config: TrainConfig, model: nn.Module
                     ) -> tuple[Callable | None, DeviceAugment | GreyBatchAugment | None, Callable, dict]:
    """Return the transforms of ``config``'s dataset and its resolved data config.

    Returns:
        (train transform, device stage, eval transform, data config). An image folder's train transform ends in uint8
        images and its device stage (:class:`~vitzoo.train.data.DeviceAugment`) normalises and erases whole batches
        on the training device (and runs RandAugment with ``augment_on_device``), writing the run's 16-bit dtype in
        mixed precision (:func:`model_input_dtype`); Fashion-MNIST's train transform
        normalises on its own and has no device stage (None), or with ``augment_on_device`` is None (uint8 samples)
        and its device stage (:class:`~vitzoo.train.data.GreyBatchAugment`) crops, flips and normalises batches.
    """
    from timm.data import resolve_data_config

    if config.dataset == "fashion_mnist":
        size = config.img_size or 28
        data_config = {"input_size": (1, size, size), "interpolation": "bilinear", "crop_pct": 1.0,
                       "mean": FASHION_MNIST_MEAN, "std": FASHION_MNIST_STD}
        if config.augment_on_device:  # the loader hands over uint8 images; crop, flip and normalise per batch
            return None, GreyBatchAugment(size, config.crop_pad, config.hflip), GreyTransform(False, size), data_config
        train_tf = GreyTransform(True, size, pad=config.crop_pad, hflip=config.hflip)
        return train_tf, None, GreyTransform(False, size), data_config
    args: dict[str, Any] = {"crop_pct": config.crop_pct} if config.crop_pct else {}
    if config.img_size:
        # The model's pretrained_cfg keeps its registered input size; a run at another size must say so.
        args["input_size"] = (config.in_chans or 3, config.img_size, config.img_size)
    data_config = resolve_data_config(args, model=model)
    augment = AugmentConfig(config.auto_augment, config.re_prob, config.re_mode, config.color_jitter, config.hflip,
                            tuple(config.scale), config.train_interpolation, config.augment_on_device,
                            config.decode_on_device, config.crop_on_device)
    train_tf, device_tf, eval_tf = folder_transforms(data_config, augment, model_input_dtype(config))
    return train_tf, device_tf, eval_tf, data_config


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


# torch's Adam and AdamW (what timm's 'adam' / 'adamw' create) have a fused implementation: a kernel or two per
# group where the default for-each one launches dozens per step, each with its host cost (the for-each step spanned
# 2.3-3.3 ms of a tiny DeiT's training step on the H200's timeline, launch gaps included).
FUSED_OPTIMIZERS = ("adam", "adamw")


def build_optimizer(config: TrainConfig, model: nn.Module, lr: float, fused: bool = False) -> torch.optim.Optimizer:
    """Create the timm optimizer over :func:`param_groups`; ``fused``: torch's fused implementation where the
    optimizer has one (:data:`FUSED_OPTIMIZERS`, also behind timm's ``lookahead_`` prefix)."""
    from timm.optim import create_optimizer_v2

    extra = {"fused": True} if fused and config.opt.lower().removeprefix("lookahead_") in FUSED_OPTIMIZERS else {}
    return create_optimizer_v2(param_groups(model, lr, config.weight_decay), opt=config.opt, lr=lr,
                               weight_decay=config.weight_decay, eps=config.opt_eps, betas=tuple(config.opt_betas),
                               **extra)


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


class RampedDropPath(nn.Module):
    """timm's ``DropPath`` (each sample's residual branch dropped with probability ``rate``, the kept ones scaled by
    ``1 / (1 - rate)`` when ``scale_by_keep``) with its rate in a tensor on the model's device, which
    :class:`DropPathRamp` rewrites in place: a step compiled or replayed from a CUDA graph reads the current rate,
    where timm's float attribute would make torch.compile recompile at every change and a graph keep the rate it was
    captured with."""

    def __init__(self, rate: float, scale_by_keep: bool = True, device: torch.device | None = None) -> None:
        super().__init__()
        self.register_buffer("rate", torch.tensor(float(rate), device=device), persistent=False)
        self.scale_by_keep = scale_by_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = 1 - self.rate
        kept = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device) < keep
        scale = kept / keep if self.scale_by_keep else kept.float()
        return x * scale.to(x.dtype)


class DropPathRamp:
    """EfficientViT's scheduled stochastic depth (``drop_path_ramp``): every timm ``DropPath`` of a model at its rate
    times the training progress after the warm-up, 0 until the warm-up ends, rising linearly to 1 at the last epoch
    before the cool-down. Replaces each ``DropPath`` by a :class:`RampedDropPath` of the same rate, so build it before
    the model is compiled or its step captured."""

    def __init__(self, model: nn.Module, warmup_updates: float, total_updates: int) -> None:
        from timm.layers import DropPath

        device = next(model.parameters()).device
        self.paths: list[tuple[RampedDropPath, float]] = []
        for parent in list(model.modules()):
            for name, child in parent.named_children():
                if isinstance(child, DropPath):
                    ramped = RampedDropPath(child.drop_prob, child.scale_by_keep, device)
                    setattr(parent, name, ramped)
                    self.paths.append((ramped, child.drop_prob))
        self.warmup_updates = warmup_updates
        self.ramp_updates = max(total_updates - warmup_updates, 1)

    def step(self, num_updates: int) -> None:
        """Set the rates for the update after ``num_updates`` (a function of it alone, so a resume replays them)."""
        progress = min(max((num_updates - self.warmup_updates) / self.ramp_updates, 0.0), 1.0)
        for module, rate in self.paths:
            module.rate.fill_(rate * progress)
